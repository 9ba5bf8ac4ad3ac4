"""The `attention` mixer kind: causal softmax attention (MHA, GQA, MQA), its projections, Q/K norms, rope,
windows, chunks and a query temperature. Sizes are the config fields n_heads, n_kv_heads, head_dim and
value_dim (per layer where the file gives arrays).

Per query at position p, key at position j (j <= p):
  sliding_window layers:  j > p - W                      (W = sliding_window)
  chunked layers:         floor(j / C) == floor(p / C)   (C = attention_chunk_size; each chunk attends alone)
  temperature:            q *= 1 + s * log(floor((p + o) / L) + 1)
                          (s = attn_temperature_scale, L = attn_temperature_length, o = attn_temperature_offset)
Order on q and k: Q/K norm (before rope), rope, temperature (q only), Q/K norm (after rope).
Output gate (output_gate: sigmoid): the Q projection gives, per head, head_dim query
values then head_dim gate values g; each head's attention output is multiplied by sigmoid(g) before W_o.
Value norm (v_norm: rms): v / sqrt(mean(v^2) + eps) over each head, no weights.
Optional V projection (v_proj: optional): a layer without attn_v takes v = W_k x (before the K norm and rope).
Shared keys and values (kv_from: F): the section's layers compute queries only and attend to the keys and
values (every position, as stored) of layer F, which the cache holds once.
Sliding-window layers take head_dim_swa, value_dim_swa and rope_dims_swa where those are not 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tfb.spec.base import (
    LAYER_PATTERN_DOC,
    SELECTOR_DOC,
    ConfigField,
    KindSection,
    LayerPattern,
    LayerSelector,
    Need,
    NormKind,
    Presence,
    Strict,
    add_slot,
)

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class QKNorm(Strict):
    """A norm on queries and keys, before rope unless `after_rope`."""

    kind: NormKind = Field("rmsnorm", description="norm kind of the Q/K norm")
    over: Literal["head", "each_head", "all"] = Field(
        "head", description="head: normalise each head, weights of head_dim shared by the heads; each_head: "
        "the same with weights of its own for each head ([heads, head_dim]); all: the whole projection")
    bias: Literal["norm", "none", "required", "optional"] = Field(
        "norm", description="bias of the Q/K norms (layernorm only); norm: as `norm.bias`")
    presence: Literal["required", "optional"] = Field(
        "required", description="optional: only in files that have the Q/K norm tensors (the norm applies "
        "where they are)")
    parametric: bool = Field(True, description="false: no weight tensors, the norm only divides by rms(x) "
                             "(or centres and divides by the std: layernorm)")
    after_rope: bool = Field(False, description="true: the norm acts after rope (and after the temperature), "
                             "not before rope")
    layers: Literal["all", "rope"] = Field(
        "all", description="all: every layer of the section; rope: only the layers that apply rope")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data


class Rope(Strict):
    """Rotary position embedding. Frequencies, dimensions and scaling come from the config fields
    `rope_base`, `rope_dims`, `rope_scaling` and friends; optional frequency-factor tensors
    (`rope_freqs`, `rope_factors_long`/`short`) divide the frequencies when the file has them."""

    pairing: Literal["adjacent", "half"] = Field(
        "adjacent", description="adjacent: rotate (x0,x1),(x2,x3)... (GGML normal mode, on the converter's "
        "permuted Q/K); half: rotate (x_i, x_{i+d/2}) (GGML NEOX mode)")
    layers: LayerSelector = Field("all", description="layers that apply rope; " + SELECTOR_DOC + " (e.g. "
                                  "{nonzero: use_rope}: rope as a file key says)")
    factors: Literal["all", "unwindowed"] = Field(
        "all", description="layers whose rope the frequency-factor tensors divide: all, or unwindowed: only the "
        "layers without a sliding window")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"layers": "none"} if data == "none" else data


class ProjectionBias(Strict):
    q: Presence = "none"
    k: Presence = "none"
    v: Presence = "none"
    o: Presence = "none"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data == "qkv":
                return {"q": "required", "k": "required", "v": "required"}
            return {"q": data, "k": data, "v": data, "o": data}
        return data


class Attention(KindSection):
    """softmax(scale * q.k^T + mask) v per head, keys and values shared by groups of query heads."""

    role: ClassVar[str] = "mixer"
    SLOTS: ClassVar[tuple[str, ...]] = (
        "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output",
        "attn_q_bias", "attn_k_bias", "attn_v_bias", "attn_qkv_bias", "attn_output_bias",
        "attn_q_norm", "attn_k_norm", "attn_q_norm_bias", "attn_k_norm_bias", "attn_sinks")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("attention_chunk_size", "int", "positions per chunk of the chunked layers (0: no chunks)", 0,
                    "nonnegative"),
        ConfigField("attn_temperature_offset", "float", "o in the query temperature 1 + s*log(floor((pos + o)/"
                    "length) + 1)", 0.0, "nonnegative"),
        ConfigField("use_qk_norm", "int", "1: the spec's Q/K norm without weights applies, 0: it does not (for "
                    "families where llama.cpp infers it from another fact of the file)", 1, "nonnegative"),
        ConfigField("use_rope", "bool", "whether rope applies, for files that carry it as a key (such as "
                    "rope.scaling.finetuned); a spec's rope.layers reads it with {nonzero: use_rope}", True),
        ConfigField("sliding_window_layers", "int", "1 on the layers with a sliding window, 0 on the others (a "
                    "per-layer array, for layer rules: {nonzero: sliding_window_layers})", 0, "nonnegative"),
        ConfigField("head_dim_swa", "int", "width of a query/key head in the sliding-window layers (0: head_dim)", 0,
                    "nonnegative"),
        ConfigField("value_dim_swa", "int", "width of a value head in the sliding-window layers (0: value_dim)", 0,
                    "nonnegative"),
        ConfigField("rope_dims_swa", "int", "dimensions rope rotates in the sliding-window layers (0: rope_dims)", 0,
                    "nonnegative"),
        ConfigField("shared_kv_layers", "int", "the last N layers compute no keys and values but read an earlier "
                    "layer's (kv_from); for layer rules: {last: shared_kv_layers}", 0, "nonnegative"),
        ConfigField("kv_source_layer", "int", "the layer whose keys and values a kv_from section reads (full "
                    "attention layers)", 0),
        ConfigField("kv_source_layer_swa", "int", "the layer whose keys and values a kv_from section reads "
                    "(sliding-window layers)", 0),
    )

    kind: Literal["attention"] = "attention"
    qkv: Literal["separate", "fused", "auto"] = Field(
        "auto", description="separate q/k/v projections, one fused qkv projection split by head counts, "
        "or auto: fused when the file has the fused tensor")
    bias: ProjectionBias = Field(
        ProjectionBias(), description="bias of each projection q, k, v, o: none, required or optional; "
        "a single value applies to all four, 'qkv' means required on q, k and v")
    qk_norm: QKNorm | None = Field(None, description="norm of queries and keys before rope; null: none")
    rope: Rope = Field(Rope(), description="rotary position embedding, or 'none'")
    sliding_window: LayerPattern = Field(
        "none", description="layers that attend only to the last `sliding_window` positions; "
        + LAYER_PATTERN_DOC)
    chunked: LayerSelector = Field(
        "none", description="layers where a query sees only the keys of its own chunk: positions are cut "
        "into chunks of `attention_chunk_size` (none when 0), floor(key/C) == floor(query/C); " + SELECTOR_DOC)
    temperature: Literal["all", "no_rope"] = Field(
        "all", description="layers whose queries the temperature (attn_temperature_scale > 0) scales: all, or "
        "no_rope: only those that do not apply rope")
    sinks: bool = Field(False, description="a learned per-head logit that joins each softmax (attn_sinks)")
    v_proj: Literal["required", "optional"] = Field(
        "required", description="optional: a layer whose file has no attn_v uses its K projection (before the K "
        "norm and rope) as values")
    v_norm: Literal["none", "rms"] = Field("none", description="rms: values divided by their RMS over each head "
                                           "(no weights)")
    kv_from: str | None = Field(
        None, description="a config field holding a layer index: this section's layers compute no keys and values "
        "and attend to that layer's (same sizes and window), which the cache stores once")
    output_gate: Literal["none", "sigmoid"] = Field(
        "none", description="sigmoid: the Q projection carries per head head_dim query values then head_dim gate "
        "values, and each head's output is multiplied by sigmoid(gate) before the output projection")

    @field_validator("qk_norm", mode="before")
    @classmethod
    def _none_string(cls, value: Any) -> Any:
        return None if value == "none" else value

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {}
        if self.kv_from is not None:  # queries only
            out["attn_q"] = out["attn_output"] = "required"
            add_slot(out, "attn_q_bias", self.bias.q)
            add_slot(out, "attn_output_bias", self.bias.o)
            if self.qk_norm is not None and self.qk_norm.parametric and facts.qk_norm:
                out["attn_q_norm"] = "required"
                if self.qk_norm.kind == "layernorm":
                    bias = spec.norm.bias if self.qk_norm.bias == "norm" else self.qk_norm.bias
                    add_slot(out, "attn_q_norm_bias", bias)
            return out
        if facts.fused_qkv:
            out["attn_qkv"] = "required"
            biases = {self.bias.q, self.bias.k, self.bias.v} - {"none"}
            if biases:
                add_slot(out, "attn_qkv_bias", "required" if biases == {"required"} else "optional")
        else:
            for p in "qkv":
                out[f"attn_{p}"] = "required"
                add_slot(out, f"attn_{p}_bias", getattr(self.bias, p))
            out["attn_v"] = self.v_proj
        out["attn_output"] = "required"
        add_slot(out, "attn_output_bias", self.bias.o)
        if self.qk_norm is not None and self.qk_norm.parametric and facts.qk_norm:
            out["attn_q_norm"] = out["attn_k_norm"] = "required"
            if self.qk_norm.kind == "layernorm":
                bias = spec.norm.bias if self.qk_norm.bias == "norm" else self.qk_norm.bias
                add_slot(out, "attn_q_norm_bias", bias)
                add_slot(out, "attn_k_norm_bias", bias)
        if self.sinks:
            out["attn_sinks"] = "required"
        return out

    def fact_options(self) -> dict[str, set[bool]]:
        fused = {"separate": {False}, "fused": {True}, "auto": {False, True}}[self.qkv]
        qk_norm = {False, True} if self.qk_norm is not None and self.qk_norm.presence == "optional" else {True}
        return {"fused_qkv": fused, "qk_norm": qk_norm}

    def file_facts(self, has: Callable[[str], bool]) -> dict[str, bool]:
        return {"fused_qkv": self.qkv == "fused" or (self.qkv == "auto" and has("attn_qkv")),
                "qk_norm": self.qk_norm is not None and (self.qk_norm.presence == "required" or has("attn_q_norm"))}

    def uses_rope(self) -> bool:
        return self.rope.layers != "none"

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        out: list[tuple[tuple[str, ...], str]] = []
        for key, pattern in ((("sliding_window",), self.sliding_window), (("rope", "layers"), self.rope.layers),
                             (("chunked",), self.chunked)):
            if pattern == []:  # repeated over the layers, an empty list would divide by zero
                out.append((key, "an empty list of layers; write 'none' for no layers"))
        if self.qk_norm is not None and not self.qk_norm.parametric:
            if self.qk_norm.presence == "optional":
                out.append((("qk_norm", "presence"), "a Q/K norm without weights has no tensors that could be "
                            "present or absent; write presence: required"))
            if self.qk_norm.kind == "layernorm" and self.qk_norm.bias not in ("norm", "none"):
                out.append((("qk_norm", "bias"), "a Q/K norm without weights has no bias either"))
        elif self.qk_norm is not None and self.qk_norm.layers != "all":
            out.append((("qk_norm", "layers"), "a Q/K norm with weight tensors applies on every layer of its "
                        "section; give the other layers a mixer section of their own, or write parametric: false"))
        if self.kv_from is not None:
            from tfb.spec.fields import FIELD_BY_NAME

            field = FIELD_BY_NAME.get(self.kv_from)
            if field is None or field.kind != "int":
                out.append((("kv_from",), f"`{self.kv_from}` is not an integer config field; kv_from names the "
                            "field that holds the layer to read, e.g. kv_source_layer"))
            if self.qkv == "fused":
                out.append((("kv_from",), "a layer that reads another layer's keys and values has no fused QKV "
                            "projection; write qkv: separate"))
            if self.output_gate != "none" or (self.qk_norm is not None and self.qk_norm.after_rope):
                out.append((("kv_from",), "layers that read another layer's keys and values take neither an output "
                            "gate nor a Q norm after rope"))
        return out

    def sized(self, c: Any, windowed: bool) -> Any:
        """The config with a sliding-window layer's own head sizes (head_dim_swa...) where it has them."""
        if not windowed or not c.head_dim_swa:
            return c
        import dataclasses

        return dataclasses.replace(c, head_dim=c.head_dim_swa, value_dim=c.value_dim_swa or c.head_dim_swa,
                                   rope_dims=c.rope_dims_swa or c.head_dim_swa)

    def check(self, c: Any) -> str | None:
        c = self.sized(c, self.sliding_window == "all" and c.sliding_window > 0)
        if self.kv_from is not None:
            first = c.n_layers - c.shared_kv_layers
            if first <= 0:
                return (f"`shared_kv_layers` = {c.shared_kv_layers} must be less than `n_layers` = {c.n_layers}: the "
                        "shared layers read the keys and values of an earlier layer, which must compute its own")
            source = getattr(c, self.kv_from)
            if not 0 <= source < first:
                return (f"`{self.kv_from}` = {source} must be a layer before the {c.shared_kv_layers} shared ones "
                        f"(0 to {first - 1})")
        if self.v_proj == "optional" and c.value_dim != c.head_dim:
            return (f"v_proj: optional needs value_dim = {c.value_dim} equal to head_dim = {c.head_dim} (a layer "
                    "without attn_v takes its keys as values)")
        if c.use_qk_norm == 0 and self.qk_norm is not None and self.qk_norm.parametric:
            return ("use_qk_norm = 0 turns off only a Q/K norm without weights (parametric: false); one with "
                    "weight tensors follows the file (qk_norm.presence: optional)")
        if c.n_heads <= 0 or c.n_kv_heads <= 0:
            return f"`n_heads` = {c.n_heads} and `n_kv_heads` = {c.n_kv_heads} must be positive in an attention layer"
        if c.n_heads % c.n_kv_heads:
            return f"n_heads = {c.n_heads} is not a multiple of n_kv_heads = {c.n_kv_heads}"
        for name in ("head_dim", "value_dim", "attention_scale"):
            if not getattr(c, name) > 0:
                return f"`{name}` = {getattr(c, name)} must be positive in an attention layer"
        if self.output_gate != "none" and c.value_dim != c.head_dim:
            return (f"output_gate needs value_dim = {c.value_dim} equal to head_dim = {c.head_dim} (one gate value per "
                    "output value)")
        if self.uses_rope() and (c.rope_dims > c.head_dim or c.rope_dims % 2):
            return f"rope_dims = {c.rope_dims} must be even and at most head_dim = {c.head_dim}"
        if self.uses_rope() and c.rope_scaling == "yarn" and c.rope_base == 1.0:
            return "rope_base = 1 cannot be used with YaRN scaling (its correction dimensions divide by log(base))"
        return None
