"""Building blocks of the spec language shared by the top-level schema and the kinds' sections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts

Presence = Literal["none", "required", "optional"]
NormKind = Literal["rmsnorm", "layernorm"]
Activation = Literal["silu", "gelu_tanh", "gelu_erf", "relu", "relu_squared"]
Need = Literal["required", "optional"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LayerPattern = Literal["all", "none"] | list[bool]
LAYER_PATTERN_DOC = ("which layers: 'all', 'none', or a list of booleans repeated over the layers "
                     "([true, false] is every even layer)")


class LayerRule(Strict):
    """Which layers, from config fields: one condition, or several that must all hold."""

    below: str | None = Field(None, description="layers i < FIELD (e.g. the leading dense layers)")
    every: str | None = Field(None, description="layers with (i + 1) % FIELD == 0 (an interleave step; none when 0)")
    nonzero: str | None = Field(None, description="layers where FIELD (a per-layer value or one for all) is not 0")
    zero: str | None = Field(None, description="layers where FIELD (a per-layer value or one for all) is 0")
    last: str | None = Field(None, description="the last FIELD layers: i >= n_layers - FIELD")

    @model_validator(mode="after")
    def _some(self) -> LayerRule:
        if not self.conditions():
            raise ValueError("give one or more of: below, every, nonzero, zero, last (the layers where all hold)")
        return self

    def conditions(self) -> list[tuple[str, str]]:
        """(condition, config field) for each condition given."""
        return [(name, value) for name, value in self if value is not None]

    def holds(self, layer: int, value: Any) -> bool:
        """Whether every condition holds at `layer`; `value(field, layer)` reads a config field."""
        return all(_condition_holds(condition, layer, value(field, layer), value) for condition, field in
                   self.conditions())


def _condition_holds(condition: str, layer: int, n: Any, value: Any) -> bool:
    if condition == "last":
        return bool(layer >= value("n_layers", layer) - n)
    if condition == "below":
        return bool(layer < n)
    if condition == "every":
        return bool(n > 0 and (layer + 1) % n == 0)
    return (n != 0) == (condition == "nonzero")


LayerSelector = LayerPattern | LayerRule
SELECTOR_DOC = LAYER_PATTERN_DOC + ("; or a rule on config fields: {below: F}, {every: F}, {nonzero: F}, {zero: F}, "
                                   "{last: F}, "
                                   "or several of them, which must all hold")


def add_slot(out: dict[str, Need], slot: str, presence: str) -> None:
    """Add `slot` to a kind's needs when `presence` (a Presence value) asks for it."""
    if presence in ("required", "optional"):
        out[slot] = presence  # type: ignore[assignment]


def selects(selector: LayerSelector, layer: int, value: Any) -> bool:
    """Whether `selector` holds for `layer`; `value(field, layer)` reads a config field at a layer."""
    if selector == "all":
        return True
    if selector == "none":
        return False
    if isinstance(selector, list):
        return bool(selector[layer % len(selector)])
    assert isinstance(selector, LayerRule)
    return selector.holds(layer, value)


@dataclass(frozen=True)
class ConfigField:
    """One config field a spec's `hparams:` may fill: its kind, range and meaning."""

    name: str
    kind: Literal["int", "float", "bool", "str"]
    doc: str
    default: int | float | bool | str | None  # None: a concrete spec must give a rule
    range: str = "any"  # positive, nonnegative or any
    choices: tuple[str, ...] = ()


class KindSection(Strict):
    """The settings of one mixer or feed-forward kind, and the layers that use it."""

    role: ClassVar[str]  # "mixer" or "ffn"
    SLOTS: ClassVar[tuple[str, ...]] = ()  # every per-layer tensor slot the kind may read
    FIELDS: ClassVar[tuple[ConfigField, ...]] = ()  # config fields the kind adds to the spec language
    ABSENT: ClassVar[bool] = False  # the kind is "nothing here": the block leaves out this branch and its norms
    OWN_PRE_NORM: ClassVar[bool] = False  # the kind takes the un-normed residual and applies the ffn_norm itself

    kind: str
    layers: LayerSelector = Field("all", description="layers using this section; the first section of the "
                                  "list whose layers hold is used. " + SELECTOR_DOC)

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        """The per-layer tensor slots a layer of this kind reads from a file with these facts."""
        raise NotImplementedError

    def fact_options(self) -> dict[str, set[bool]]:
        """The file facts (tfb.spec.slots.FileFacts fields) this section lets vary, with their possible values."""
        return {}

    def file_facts(self, has: Callable[[str], bool]) -> dict[str, bool]:
        """The facts a file settles for this section; `has(slot)` says whether some layer has that tensor."""
        return {}

    def uses_rope(self) -> bool:
        """Whether some layer of this kind applies rotary embeddings (the rope factor tensors then apply)."""
        return False

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Contradictions within the section: (key path inside the section, message)."""
        return []

    def check(self, config: Any) -> str | None:
        """What is wrong with a layer's config for this kind (None: nothing); `config` is the layer's."""
        return None
