"""The `parallel` mixer kind: several mixers of other kinds side by side in one layer, all reading the same
(normed) input, their outputs summed (attention next to a Mamba-2 layer, for one).

Per layer, with h the layer's normed input and branches M_1..M_n (each a mixer section of its own kind):
  y = sum_i s_i * M_i(h)          s_i = config.<scales[i]> where `scales` names a field, else 1
Each branch keeps its own state across calls (keys and values for attention, conv window and SSM state for
ssd, ...): the layer's state is the list of its branches' states; it can go back to an earlier position only
when every branch's can (else snapshots copy it). Each branch reads its own tensor slots, so two branches
of one layer cannot be of kinds that read the same slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import KindSection, Need

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts

    MixerSection = KindSection


class Parallel(KindSection):
    """y = sum_i s_i * branch_i(x): mixers of other kinds on the same input, their outputs added."""

    role: ClassVar[str] = "mixer"

    kind: Literal["parallel"] = "parallel"
    branches: list[MixerSection] = Field(
        description="the mixers run side by side: two or more mixer sections of other kinds (no `layers:` of "
        "their own; the parallel section's `layers` choose the layers)")
    scales: list[str | None] = Field(
        default_factory=list, description="per branch, a config field its output is multiplied by (null: 1); "
        "empty: no scales")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {}
        for branch in self.branches:
            out.update(branch.slots(spec, facts))
        return out

    def fact_options(self) -> dict[str, set[bool]]:
        out: dict[str, set[bool]] = {}
        for branch in self.branches:
            for name, values in branch.fact_options().items():
                out[name] = out.get(name, set()) | values
        return out

    def file_facts(self, has: Callable[[str], bool]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for branch in self.branches:
            for name, value in branch.file_facts(has).items():
                out[name] = out.get(name, False) or value
        return out

    def uses_rope(self) -> bool:
        return any(branch.uses_rope() for branch in self.branches)

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        from tfb.spec.fields import FIELD_BY_NAME  # the fields exist once every kind module is loaded

        out: list[tuple[tuple[str, ...], str]] = []
        if len(self.branches) < 2:
            out.append((("branches",), "a parallel mixer needs two or more branches (one is just that mixer)"))
        if self.scales and len(self.scales) != len(self.branches):
            out.append((("scales",), f"{len(self.scales)} scales for {len(self.branches)} branches: give one per "
                        "branch (null for none), or none at all"))
        for i, name in enumerate(self.scales):
            field = FIELD_BY_NAME.get(name) if name is not None else None
            if name is not None and (field is None or field.kind not in ("int", "float")):
                out.append((("scales", str(i)), f"`{name}` is not a numeric config field (a scale multiplies the "
                            "branch output by one)"))
        seen: dict[str, int] = {}
        for i, branch in enumerate(self.branches):
            where = ("branches", str(i))
            if isinstance(branch, Parallel):
                out.append(((*where, "kind"), "a branch cannot itself be parallel: list its branches here instead"))
            if branch.layers != "all":
                out.append(((*where, "layers"), "a branch runs in every layer of its parallel section; give "
                            "`layers:` on the parallel section instead"))
            out += [((*where, *key), message) for key, message in branch.problems()]
            for slot in type(branch).SLOTS:
                if seen.setdefault(slot, i) != i:
                    out.append(((*where, "kind"), f"branches {seen[slot]} and {i} both read tensor slot {slot}: "
                                "branches of one layer must be of kinds with tensors of their own"))
                    break
        return out

    def check(self, c: Any) -> str | None:
        for branch in self.branches:
            problem = branch.check(c)
            if problem:
                return f"{problem} (the {branch.kind} branch of a parallel mixer)"
        for name in self.scales:
            if name is not None and not isinstance(getattr(c, name), (int, float)):
                return f"`{name}` = {getattr(c, name)!r} is not a number (a scale of a parallel mixer's branch)"
        return None
