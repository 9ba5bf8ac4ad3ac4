"""ModelConfig: the plain numbers and facts the generic modules are built from.

Fields made with `hparam()` are filled by a spec's `hparams:` rules from GGUF metadata; their types,
ranges and docs here are the single source of truth for the spec language (see tfb/spec/fields.py).
The rest are facts settled by the file's tensor inventory or by the caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Range = Literal["positive", "nonnegative", "any"]
ROPE_SCALING_KINDS = ("none", "linear", "yarn", "longrope")
_REQUIRED: Any = dataclasses.MISSING
MAX_LAYERS = 4096  # more blocks than any real model: a file claiming more is refused


def hparam(doc: str, default: Any = _REQUIRED, range: Range = "any", choices: tuple[str, ...] = ()) -> Any:
    meta = {"hparam": True, "doc": doc, "range": range, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    architecture: str
    vocab_size: int = hparam("number of tokens in the vocabulary", range="positive")
    hidden_size: int = hparam("width of the residual stream (n_embd)", range="positive")
    n_layers: int = hparam("number of transformer blocks", range="positive")
    block_count: int = hparam("blocks the file holds, next-token-prediction blocks included (0: not read; a spec "
                              "that builds fewer derives n_layers from it)", 0, "nonnegative")
    nextn_predict_layers: int = hparam("trailing blocks of the file that predict further tokens (multi-token "
                                       "prediction), which llama.cpp does not run", 0, "nonnegative")
    n_heads: int = hparam("query heads per layer", range="nonnegative")
    n_kv_heads: int = hparam("key/value heads per layer (GQA when fewer than n_heads)", range="nonnegative")
    head_dim: int = hparam("width of one query/key head (0: no attention)", range="nonnegative")
    value_dim: int = hparam("width of one value head (0: no attention)", range="nonnegative")
    intermediate_size: int = hparam("hidden width of the feed-forward network", range="nonnegative")
    context_length: int = hparam("context the model was trained with", range="positive")
    norm_eps: float = hparam("epsilon of every norm", range="positive")
    attention_scale: float = hparam("factor on q.k before the softmax (0: no attention)", range="nonnegative")
    rope_base: float = hparam("rope frequency base (theta)", 10000.0, "positive")
    rope_dims: int = hparam("leading dimensions of each head that rope rotates", range="nonnegative")
    rope_scaling: str = hparam("rope scaling kind", "none", choices=ROPE_SCALING_KINDS)
    rope_scale_factor: float = hparam("context extension factor of linear/YaRN scaling (0 or 1: none)", 1.0,
                                      "nonnegative")
    rope_original_context: int = hparam("context the rope scaling extends from", range="positive")
    rope_attn_factor: float = hparam("extra magnitude factor on rope's cos and sin", 1.0, "positive")
    yarn_beta_fast: float = hparam("YaRN: rotations per context where extrapolation ends", 32.0, "positive")
    yarn_beta_slow: float = hparam("YaRN: rotations per context where interpolation starts", 1.0, "positive")
    yarn_log_multiplier: float = hparam("YaRN mscale_all_dim (0: the plain YaRN magnitude)", 0.0)
    attn_temperature_scale: float = hparam(
        "query temperature 1 + s*log(floor(pos/length) + 1) (0: off)", 0.0, "nonnegative")
    attn_temperature_length: int = hparam("positions per step of the query temperature", 1, "positive")
    attn_softcap: float = hparam("attention logit soft cap c: c*tanh(x/c) (0: off)", 0.0, "nonnegative")
    final_softcap: float = hparam("output logit soft cap (0: off)", 0.0, "nonnegative")
    clamp_qkv: float = hparam("clamp q, k and v to [-c, c] (0: off)", 0.0, "nonnegative")
    sliding_window: int = hparam("window of the sliding-window layers (0: none)", 0, "nonnegative")
    embedding_scale: float = hparam("factor on the token embeddings", 1.0)
    residual_scale: float = hparam("factor on each branch output before its residual add", 1.0)
    logit_scale: float = hparam("the logits are divided by this", 1.0, "positive")
    expert_count: int = hparam("experts per MoE layer (0: dense)", 0, "nonnegative")
    expert_used_count: int = hparam("experts chosen per token", 0, "nonnegative")
    expert_intermediate_size: int = hparam("hidden width of one expert", 0, "nonnegative")
    expert_weights_norm: bool = hparam("renormalise the chosen experts' weights to sum to 1", False)
    expert_weights_scale: float = hparam("factor on the chosen experts' weights (0 or 1: none)", 0.0,
                                         "nonnegative")
    swiglu_limit: float = hparam("clamp of the gated activation and of up to [-l, l] (0: off)", 0.0,
                                 "nonnegative")
    silu_beta: float = hparam("silu(x) = x * sigmoid(beta * x)", 1.0, "positive")
    up_offset: float = hparam("a gated activation multiplies by (up + offset)", 0.0)
    rope_base_swa: float = hparam("rope base of the sliding-window layers", 10000.0, "positive")
    rope_scale_factor_swa: float = hparam("rope scale factor of the sliding-window layers (0 or 1: none)", 1.0,
                                          "nonnegative")
    per_layer_embedding_size: int = hparam("width of each layer's slice of the per-layer token embedding (0: none; "
                                           "see embedding.per_layer)", 0, "nonnegative")

    # facts from the file's tensors and from the caller
    fused_qkv: bool = False
    fused_qkvz: bool = False  # a gated delta-net's q, k, v and z come from one projection (ssm_in)
    qk_norm: bool = False  # the spec's Q/K norm applies (an optional one: the file has its tensors)
    parallel_residual: bool = False
    run_context_length: int = 0  # the context the model runs with (load(context_length=...))

    # the values of the fields the kinds add (tfb.spec.kinds), read as attributes like the others
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # fields whose file value is a per-layer array: name -> one value per layer (the field holds the largest)
    per_layer: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    _layers: dict[int, ModelConfig] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"ModelConfig has no field {name!r}")

    def layer(self, index: int) -> ModelConfig:
        """This config as layer `index` sees it: per-layer values in place of the fields."""
        if not self.per_layer:
            return self
        if index not in self._layers:
            own = {name: values[index] for name, values in self.per_layer.items()}
            fields = {k: v for k, v in own.items() if k not in self.extra}
            extra = {**self.extra, **{k: v for k, v in own.items() if k in self.extra}}
            self._layers[index] = dataclasses.replace(self, **fields, extra=extra, per_layer={}, _layers={})
        return self._layers[index]

    def value(self, name: str, layer: int) -> Any:
        """One field at one layer."""
        values = self.per_layer.get(name)
        return values[layer] if values is not None else getattr(self, name)

    @property
    def has_experts(self) -> bool:
        return self.expert_count > 0

    def describe(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "per_layer", "_layers")}
        return {**out, **self.extra, **{f"{k} (per layer)": list(v) for k, v in self.per_layer.items()}}


HPARAM_FIELDS = tuple(f for f in dataclasses.fields(ModelConfig) if f.metadata.get("hparam"))
