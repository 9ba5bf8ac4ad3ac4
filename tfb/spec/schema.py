"""The spec language: what a YAML spec may say, as pydantic models.

A spec is data. Each switch names the math it selects, never a model family. Numbers that a GGUF file
can carry (sizes, epsilons, rope parameters, scales) are not switches but `hparams`: rules that read
them from metadata (see `fields.py`). Shorthands (`bias: required`, `rope: none`) are expanded before
validation so that every error points at one clear field.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from tfb.spec.base import Activation, KindSection, NormKind, Presence, Strict
from tfb.spec.fields import FIELDS
from tfb.spec.kinds import FFN_KINDS, MIXER_KINDS, all_slots, section_type

Scalar = int | float | bool | str


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
    difference: tuple[Operand, Operand] | None = Field(None, description="a - b")
    sqrt: Operand | None = Field(None, description="square root")
    inverse_sqrt: Operand | None = Field(None, description="1 / square root")
    length_of: str | None = Field(None, description="number of elements of a metadata array (key template)")
    zero_every: Operand | None = Field(None, description="one value per layer: 0 on layers with (i + 1) % F == 0, "
                                       "1 on the others (e.g. recurrent layers between full-attention layers)")
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
        operands: list[Any] = [self.field, self.sqrt, self.inverse_sqrt, self.otherwise, self.zero_every,
                               *(self.quotient or ()), *(self.product or ()), *(self.difference or ())]
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


if TYPE_CHECKING:
    MixerSection = KindSection
    FfnSection = KindSection
else:  # one kind's section, chosen by its `kind:` (tfb.spec.kinds)
    MixerSection = section_type("mixer")
    FfnSection = section_type("ffn")


def _as_list(value: Any) -> Any:
    """A single section means every layer uses it."""
    return [value] if isinstance(value, dict) else value


class Block(Strict):
    residual: Literal["sequential", "parallel", "auto"] = Field(
        "sequential", description="sequential: x + attn, then + ffn; parallel: x + attn(n(x)) + ffn(n(x)); "
        "auto: parallel when the file has no ffn_norm tensors (as llama.cpp decides)")
    pre_norm: bool = Field(True, description="norm before attention and before the feed-forward")
    post_norm: bool = Field(False, description="norm on the attention and feed-forward outputs")
    output_scale: Presence = Field("none", description="a per-layer factor on the block's output (the whole "
                                   "residual stream), tensor layer_output_scale")


class PerLayerEmbedding(Strict):
    """Per-layer input embeddings (in files whose per_layer_embedding_size is not 0): a second token
    embedding with a slice of per_layer_embedding_size values for each layer, mixed with a projection of the
    input embedding; each block adds a gated projection of its slice to its output."""

    activation: Activation = Field("gelu_tanh", description="activation of each layer's input gate")


class Embedding(Strict):
    positions: Literal["none", "learned"] = Field(
        "none", description="learned: add a learned absolute position embedding (position_embd)")
    per_layer: PerLayerEmbedding | None = Field(
        None, description="per-layer input embeddings, where the file's per_layer_embedding_size is not 0 "
        "(docs/spec-language.md, embedding); null: none")


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
    "per_layer_token_embd", "per_layer_model_proj", "per_layer_proj_norm",
)
# the block's own slots (the norms around its mixer and feed-forward); the kinds add theirs
BLOCK_SLOTS = ("attn_norm", "attn_norm_bias", "post_attention_norm", "post_attention_norm_bias",
               "ffn_norm", "ffn_norm_bias", "post_ffw_norm", "post_ffw_norm_bias",
               "layer_output_scale", "per_layer_inp_gate", "per_layer_proj", "per_layer_post_norm")
LAYER_SLOTS = (*BLOCK_SLOTS, *all_slots())


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
    unread: list[str] = Field(
        default_factory=list, description="names of tensors the model leaves unread on purpose (as llama.cpp "
        "skips them): '*' matches any text, '{i}' the index of a block past the built ones (n_layers and up); "
        "such tensors are not loaded and not reported as unread")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("unread")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            rest = pattern.replace("{i}", "")
            if "{" in rest or "}" in rest or not rest.strip("*"):
                raise ValueError(f"pattern {pattern!r}: '*' and '{{i}}' are the only wildcards, and it must name "
                                 "something besides them")
        return value

    def left_unread(self, name: str, n_layers: int) -> bool:
        """Whether `name` matches an `unread` pattern ({i} only matching blocks past the model's n_layers)."""
        for pattern in self.unread:
            regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\{i\}", r"(\d+)")
            found = re.fullmatch(regex, name)
            if found and all(int(index) >= n_layers for index in found.groups()):
                return True
        return False


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
    mixer: list[MixerSection] = Field(
        default_factory=lambda: [MIXER_KINDS["attention"].model_validate({})],
        description="the token mixer of each layer: one section (every layer) or a list whose first section "
        "whose `layers` hold is used; `kind:` picks the kind (default attention)")
    ffn: list[FfnSection] = Field(
        default_factory=lambda: [FFN_KINDS["dense"].model_validate({})],
        description="the feed-forward of each layer: one section or a list, as `mixer`; `kind:` picks the "
        "kind (default dense)")
    block: Block = Block()
    output: Output = Output()
    tensors: Tensors = Tensors()

    @field_validator("mixer", "ffn", mode="before")
    @classmethod
    def _sections(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("mixer", "ffn")
    @classmethod
    def _not_empty(cls, value: list[KindSection]) -> list[KindSection]:
        if not value:
            raise ValueError("give at least one section")
        return value

    def sections(self) -> list[KindSection]:
        """Every mixer and feed-forward section."""
        return [*self.mixer, *self.ffn]
