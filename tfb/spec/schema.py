"""The spec language: what a YAML spec may say, as pydantic models.

A spec is data. Each switch names the math it selects, never a model family. Numbers that a GGUF file
can carry (sizes, epsilons, rope parameters, scales) are not switches but `hparams`: rules that read
them from metadata (see `fields.py`). Shorthands (`bias: required`, `rope: none`) are expanded before
validation so that every error points at one clear field.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from tfb.spec.fields import FIELDS

Presence = Literal["none", "required", "optional"]
NormKind = Literal["rmsnorm", "layernorm"]
Activation = Literal["silu", "gelu_tanh", "gelu_erf", "relu", "relu_squared"]
Scalar = int | float | bool | str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- hparams


Operand = Union[str, float, "Derived"]


class Case(Strict):
    """One branch of a `cases` rule: when every listed field has its value, the rule gives `value`."""

    when: dict[str, int | float | bool | str] = Field(description="config field -> value it must have")
    value: Operand = Field(description="the result: a field name, a number or a derived rule")


class Derived(Strict):
    """A value computed from other config fields or from metadata, when the file does not give it.

    Exactly one operation is set. Operands are config field names, numbers or nested derived rules.
    """

    field: str | None = Field(None, description="the value of another config field")
    quotient: tuple[Operand, Operand] | None = Field(None, description="a / b; integer fields need an exact division")
    product: tuple[Operand, Operand] | None = Field(None, description="a * b")
    sqrt: Operand | None = Field(None, description="square root")
    inverse_sqrt: Operand | None = Field(None, description="1 / square root")
    length_of: str | None = Field(None, description="number of elements of a metadata array (key template)")
    cases: list[Case] | None = Field(None, description="the first case whose `when` holds; else `otherwise`")
    otherwise: Operand | None = Field(None, description="the value when no case holds (with `cases` only)")

    @model_validator(mode="after")
    def _one_operation(self) -> Derived:
        chosen = [name for name, value in self if value is not None and name != "otherwise"]
        if len(chosen) != 1:
            ops = ", ".join(n for n in type(self).model_fields if n != "otherwise")
            raise ValueError(f"give exactly one of: {ops} (got {', '.join(chosen) or 'none'})")
        if (self.cases is None) != (self.otherwise is None):
            raise ValueError("`cases` and `otherwise` go together")
        return self

    def fields(self) -> list[str]:
        """Every config field name this rule reads, nested rules and case conditions included."""
        out: list[str] = []
        operands: list[Any] = [self.field, self.sqrt, self.inverse_sqrt, self.otherwise,
                               *(self.quotient or ()), *(self.product or ())]
        for case in self.cases or []:
            out += list(case.when)
            operands.append(case.value)
        for operand in operands:
            if isinstance(operand, str):
                out.append(operand)
            elif isinstance(operand, Derived):
                out += operand.fields()
        return out


Case.model_rebuild()


class HParam(Strict):
    """Where one config field comes from: metadata keys, then a default."""

    key: str | list[str] | None = Field(
        None, description="metadata key template(s), '{arch}' is the file's architecture; first found wins")
    default: Scalar | Derived | None = Field(
        None, description="value when no key is present: a literal or a derived rule")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `field: 1.0` means a constant; `field: "{arch}.x"` would be ambiguous, so strings stay literal.
        if isinstance(data, (bool, int, float, str)):
            return {"default": data}
        return data

    @field_validator("key")
    @classmethod
    def _key_templates(cls, value: str | list[str] | None) -> str | list[str] | None:
        for template in [value] if isinstance(value, str) else value or []:
            rest = template.replace("{arch}", "")
            if "{" in rest or "}" in rest or not rest.strip("."):
                raise ValueError(f"key template {template!r}: only '{{arch}}' may be substituted")
        return value

    def keys(self) -> list[str]:
        return [self.key] if isinstance(self.key, str) else list(self.key or [])


# --------------------------------------------------------------------------------------------- switches

LayerPattern = Literal["all", "none"] | list[bool]
LAYER_PATTERN_DOC = ("which layers: 'all', 'none', or a list of booleans repeated over the layers "
                     "([true, false] is every even layer)")


class Norm(Strict):
    """The normalisation used by every norm of the model (epsilon: the `norm_eps` field)."""

    kind: NormKind = Field("rmsnorm", description="rmsnorm: x/rms(x)*w; layernorm: (x-mean)/std*w+b")
    bias: Presence = Field("none", description="additive bias tensors of the norms")
    parametric: bool = Field(True, description="false: norms have no weight tensor (scale 1)")
    weight_offset: float = Field(0.0, description="norm output is multiplied by (weight_offset + w)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data


class QKNorm(Strict):
    """A norm on queries and keys before rope."""

    kind: NormKind = Field("rmsnorm", description="norm kind of the Q/K norm")
    over: Literal["head", "each_head", "all"] = Field(
        "head", description="head: normalise each head, weights of head_dim shared by the heads; each_head: "
        "the same with weights of its own for each head ([heads, head_dim]); all: the whole projection")
    bias: Literal["norm", "none", "required", "optional"] = Field(
        "norm", description="bias of the Q/K norms (layernorm only); norm: as `norm.bias`")
    presence: Literal["required", "optional"] = Field(
        "required", description="optional: only in files that have the Q/K norm tensors (the norm applies "
        "where they are)")

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
    layers: LayerPattern = Field("all", description="layers that apply rope; " + LAYER_PATTERN_DOC)

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


class Attention(Strict):
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
    sinks: bool = Field(False, description="a learned per-head logit that joins each softmax (attn_sinks)")

    @field_validator("qk_norm", mode="before")
    @classmethod
    def _none_string(cls, value: Any) -> Any:
        return None if value == "none" else value


class Experts(Strict):
    """Mixture of experts, used in the layers of a file whose `expert_count` is above 0. Counts,
    renormalisation and scale are the config fields `expert_count`, `expert_used_count`,
    `expert_weights_norm` and `expert_weights_scale`."""

    gating: Literal["softmax", "sigmoid", "softmax_selected"] = Field(
        "softmax", description="softmax: over all experts, then top-k; sigmoid: per expert, then top-k; "
        "softmax_selected: top-k of the router logits, then softmax over those k")
    router_bias: Presence = Field("none", description="bias of the router projection (ffn_gate_inp)")
    selection_bias: Presence = Field(
        "none", description="bias added to the probabilities for choosing experts only (exp_probs_b)")
    bias: Presence = Field("none", description="biases of the expert projections")
    gate_up: Literal["separate", "fused"] = Field(
        "separate", description="separate ffn_gate_exps/ffn_up_exps, or one fused ffn_gate_up_exps")


class FeedForward(Strict):
    gated: bool = Field(True, description="act(gate(x)) * up(x); false: act(up(x))")
    gate_up: Literal["separate", "fused"] = Field(
        "separate", description="fused: one up tensor holds [gate; up], split in half")
    activation: Activation = Field("silu", description="activation function")
    bias: Presence = Field("none", description="biases of the up, gate and down projections")
    clamp_gate: Literal["after_activation", "before_activation"] = Field(
        "after_activation", description="where the `swiglu_limit` clamp acts on the gate: on act(gate) "
        "(act(gate) <= l) or on gate itself (act(min(gate, l))); up is clamped to [-l, l] either way")
    experts: Experts | None = Field(None, description="how experts behave when the file has experts")


class Block(Strict):
    residual: Literal["sequential", "parallel", "auto"] = Field(
        "sequential", description="sequential: x + attn, then + ffn; parallel: x + attn(n(x)) + ffn(n(x)); "
        "auto: parallel when the file has no ffn_norm tensors (as llama.cpp decides)")
    pre_norm: bool = Field(True, description="norm before attention and before the feed-forward")
    post_norm: bool = Field(False, description="norm on the attention and feed-forward outputs")


class Embedding(Strict):
    positions: Literal["none", "learned"] = Field(
        "none", description="learned: add a learned absolute position embedding (position_embd)")


class Output(Strict):
    norm: bool = Field(True, description="final norm before the output projection")
    bias: Presence = Field("none", description="bias of the output projection")


# ---------------------------------------------------------------------------------------------- tensors


class TensorRef(Strict):
    name: str = Field(description="tensor name template; '{i}' is the layer index in per-layer slots")
    optional: bool = Field(False, description="the model works without it (a switch decides how)")
    if_absent: str | None = Field(None, description="another slot whose tensor stands in when absent")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _template(cls, value: str) -> str:
        rest = value.replace("{i}", "")
        if "{" in rest or "}" in rest or not rest:
            raise ValueError(f"template {value!r} may only substitute '{{i}}'")
        return value


GLOBAL_SLOTS = (
    "token_embd", "position_embd", "output_norm", "output_norm_bias", "output", "output_bias",
    "rope_freqs", "rope_factors_long", "rope_factors_short",
)
LAYER_SLOTS = (
    "attn_norm", "attn_norm_bias",
    "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output",
    "attn_q_bias", "attn_k_bias", "attn_v_bias", "attn_qkv_bias", "attn_output_bias",
    "attn_q_norm", "attn_k_norm", "attn_q_norm_bias", "attn_k_norm_bias",
    "attn_sinks", "post_attention_norm", "post_attention_norm_bias",
    "ffn_norm", "ffn_norm_bias",
    "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_bias", "ffn_up_bias", "ffn_down_bias",
    "post_ffw_norm", "post_ffw_norm_bias",
    "ffn_gate_inp", "ffn_gate_inp_bias", "exp_probs_b",
    "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps",
    "ffn_gate_exps_bias", "ffn_up_exps_bias", "ffn_down_exps_bias", "ffn_gate_up_exps_bias",
)


def _slot_model(name: str, slots: tuple[str, ...], doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {slot: (TensorRef | None, None) for slot in slots}
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True), __doc__=doc, **fields)


GlobalTensors = _slot_model("GlobalTensors", GLOBAL_SLOTS, "Model-wide tensor name templates per slot.")
LayerTensors = _slot_model("LayerTensors", LAYER_SLOTS, "Per-layer tensor name templates ('{i}') per slot.")


class Tensors(Strict):
    """Tensor names per slot. A slot is read only when a switch or the config asks for it."""

    global_: GlobalTensors = Field(GlobalTensors(), alias="global",  # type: ignore[valid-type]
                                   description="model-wide tensors")
    layer: LayerTensors = Field(LayerTensors(), description="per-layer tensors")  # type: ignore[valid-type]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


HParams = create_model(
    "HParams", __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="Config field -> rule. See docs/spec-language.md for the fields.",
    **{f.name: (HParam | None, Field(None, description=f.doc)) for f in FIELDS},  # type: ignore[call-overload]
)


# ------------------------------------------------------------------------------------------------- spec


class Spec(Strict):
    """One architecture family."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(description="the spec's name (its file name without .yaml)")
    description: str = Field("", description="one line for `tfb specs`")
    extends: str | None = Field(None, description="name or path of the spec this one builds on")
    abstract: bool = Field(False, description="a base to extend, not matched to files")
    match: list[str] = Field(default_factory=list, description="values of general.architecture served")
    hparams: HParams = Field(HParams(), description="config field -> rule")
    norm: Norm = Norm()
    embedding: Embedding = Embedding()
    attention: Attention = Attention()
    ffn: FeedForward = FeedForward()
    block: Block = Block()
    output: Output = Output()
    tensors: Tensors = Tensors()
