"""Which `mixer:` and `ffn:` sections a file's layers show, for `tfb draft`, and the drafted spec's data
with those sections.

Each layer's kind is the kind whose tensor slots cover most of the layer's tensors (an `attn_kv_a_mqa`
makes a latent attention layer, an `ffn_gate_inp` a routed one). When the layers take two kinds, the
draft is a list: the first section takes the layers that a rule on a config field selects (`below:
leading_dense_block_count`, `every: moe_layer_step`) when the file's value of that field selects exactly
them, else a pattern of the file's own layers; the last section takes the rest.

Dotted paths into the drafted data (`ffn.gating`) step into a list of sections by number (`ffn.0.layers`),
and any other word steps into its last section: the one for every other layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tfb.authoring.inventory import Inventory
from tfb.authoring.known_keys import KEYS, LAYER_RULE_FIELDS
from tfb.spec.base import KindSection, LayerRule, selects
from tfb.spec.fields import FIELD_BY_NAME
from tfb.spec.kinds import DEFAULT_KIND, FFN_KINDS, MIXER_KINDS

ROLES = ("mixer", "ffn")


def kinds_of(role: str) -> dict[str, type[KindSection]]:
    return MIXER_KINDS if role == "mixer" else FFN_KINDS


# ------------------------------------------------------------------------------------------- paths


def get_path(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list):
            if not part.isdigit():
                data = data[-1] if data else None  # the last section, then this key in it
            else:
                data = data[int(part)] if int(part) < len(data) else None
                continue
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):
            if part.isdigit():
                node = node[int(part)]
                continue
            node = node[-1]
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node = node[-1]
    node[last] = value


def section_path(role: str, index: int, count: int) -> str:
    """The dotted path of section `index` of `count`: the last one is the role itself."""
    return role if index == count - 1 else f"{role}.{index}"


# ------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Part:
    """One drafted section: its kind, its `layers:` selector (the last part takes the rest: all), the
    file's layers it serves, and the evidence; a kind that runs others side by side lists them as branches."""

    kind: str
    layers: Any
    members: frozenset[int]
    evidence: str  # the tensors that show the kind
    why: str = ""  # what shows the layers (all but the last part)
    branches: tuple[str, ...] = ()


Shape = tuple[str, tuple[str, ...]]  # a layer's kind, and its branches when it runs several


def _best(kinds: dict[str, type[KindSection]], have: set[str], default: str) -> tuple[str, int]:
    """The kind covering most of `have`; on a tie the default kind, else the one that claims the fewest missing
    tensors of other kinds (a kind that runs another's MLP beside experts loses to plain experts on a layer
    without that MLP)."""
    scores = {name: len(have & set(cls.SLOTS)) for name, cls in kinds.items()}
    best = max(scores.values())
    if scores.get(default) == best:
        return default, best

    def missing_shared(name: str) -> int:
        others = {slot for n, cls in kinds.items() if n != name for slot in cls.SLOTS}
        return len((set(kinds[name].SLOTS) & others) - have)

    return min((n for n, v in scores.items() if v == best), key=lambda n: (missing_shared(n), n)), best


def _layer_kind(inv: Inventory, role: str, layer: int) -> Shape | None:
    """The kind whose slots cover most of the layer's tensors (the default kind on a tie); None when the
    layer has no tensor of any kind of this role. When the tensors the best kind leaves over show a second
    kind (two or more of its own slots), the layer runs both side by side: the kind with `branches`."""
    kinds = kinds_of(role)
    have = {slot for cls in kinds.values() for slot in cls.SLOTS if layer in inv.layers_with(slot)}
    if not have:
        return None
    default = DEFAULT_KIND[role]
    best, _ = _best(kinds, have, default)
    rest = have - set(kinds[best].SLOTS)
    both = next((name for name, cls in kinds.items() if "branches" in cls.model_fields), None)
    if rest and both is not None:
        others = {n: c for n, c in kinds.items() if n != best and not set(c.SLOTS) & set(kinds[best].SLOTS)}
        second, count = _best(others, rest, default) if others else (best, 0)
        if count >= 2:
            return both, tuple(sorted((best, second), key=lambda n: (n != default, n)))
    return best, ()


def file_int(inv: Inventory, name: str) -> tuple[str, int] | None:
    """The key and value of an integer config field in the file, by llama.cpp's key for it."""
    for template in KEYS.get(name, ()):
        value = inv.value(template)
        if isinstance(value, int) and not isinstance(value, bool):
            return inv.key(template), value
    return None


def file_values(inv: Inventory, name: str) -> tuple[str, list[int]] | None:
    """The key of a config field in the file and its value at each layer (one integer or boolean for all, or
    an array of one per layer), by llama.cpp's key for it."""
    for template in KEYS.get(name, ()):
        value = inv.value(template)
        if isinstance(value, (bool, int)):
            return inv.key(template), [int(value)] * inv.n_layers
        try:
            values = [int(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(values) == inv.n_layers:
            return inv.key(template), values
    return None


def layers_text(layers: frozenset[int] | set[int]) -> str:
    shown = sorted(layers)
    more = "..." if len(shown) > 8 else ""
    return f"layer{'s' * (len(shown) != 1)} {', '.join(map(str, shown[:8]))}{more}"


def _kind_evidence(inv: Inventory, role: str, kind: str, members: frozenset[int], branches: tuple[str, ...] = ()) \
        -> str:
    """The file's tensors of `kind` that the role's default kind does not read, and where."""
    if branches:
        return "; ".join(_kind_evidence(inv, role, b, members) for b in branches)
    where = "every layer" if len(members) == inv.n_layers else layers_text(members)
    if getattr(kinds_of(role)[kind], "ABSENT", False):
        return f"no {role} tensors in {where}"
    own = [s for s in kinds_of(role)[kind].SLOTS if s not in kinds_of(role)[DEFAULT_KIND[role]].SLOTS
           and inv.has(s, members)] or [s for s in kinds_of(role)[kind].SLOTS if inv.has(s, members)]
    if not own:
        return f"{inv.key('{arch}.expert_count')} > 0"
    return f"{', '.join(inv.name(s) for s in own[:2])} in {where}"


def _selected(rule: LayerRule, values: list[int]) -> frozenset[int]:
    """The layers a rule selects when its field has `values[i]` at layer i."""
    return frozenset(i for i in range(len(values)) if selects(rule, i, lambda _field, layer: values[layer]))


def layout(inv: Inventory, role: str) -> list[Part]:
    """The sections `role` needs for the file's layers, first to last."""
    every = frozenset(range(inv.n_layers))
    by_kind: dict[Shape, set[int]] = {}
    absent = next((name for name, cls in kinds_of(role).items() if getattr(cls, "ABSENT", False)), None)
    for i in range(inv.n_layers):
        # no tensor of the role: the kind that has none, if any
        shape = _layer_kind(inv, role, i) or ((absent, ()) if absent is not None else None)
        if shape is not None:
            by_kind.setdefault(shape, set()).add(i)
    if role == "ffn" and int(inv.value("{arch}.expert_count", 0) or 0) > 0 and not by_kind.get(("routed", ())):
        by_kind = {("routed", ()): set(every)}  # experts by the metadata, whatever the tensors say

    def part(shape: Shape, layers: Any, members: frozenset[int], why: str = "") -> Part:
        return Part(shape[0], layers, members, _kind_evidence(inv, role, shape[0], members, shape[1]), why,
                    shape[1])

    if len(by_kind) != 2 or sum(map(len, by_kind.values())) != inv.n_layers:
        shape = next(iter(by_kind)) if len(by_kind) == 1 else (DEFAULT_KIND[role], ())
        return [part(shape, "all", every)]
    groups = sorted(((k, frozenset(v)) for k, v in by_kind.items()), key=lambda kv: min(kv[1]))
    for (first, chosen), (rest, others) in (groups, groups[::-1]):
        for condition, names in LAYER_RULE_FIELDS.items():
            for name in names:
                found = file_values(inv, name)
                if found is None or name not in FIELD_BY_NAME:
                    continue
                key, values = found
                if _selected(LayerRule(**{condition: name}), values) == chosen:
                    shown = values[0] if len(set(values)) == 1 else f"[{', '.join(map(str, values))}]"
                    return [part(first, {condition: name}, chosen, f"{key} = {shown}: {layers_text(chosen)}"),
                            part(rest, "all", others)]
    (first, chosen), (rest, others) = groups
    return [part(first, [i in chosen for i in range(inv.n_layers)], chosen,
                 f"{layers_text(chosen)}, as the file's tensors show (no config field says which layers)"),
            part(rest, "all", others)]


# ------------------------------------------------------------------------------------------- view


def _section(sections: list[dict[str, Any]], role: str, kind: str) -> dict[str, Any]:
    """The settings of the spec's first section of `kind`, else those of its first section that `kind`
    shares (a dense MLP's activation for experts)."""
    cls = kinds_of(role)[kind]
    chosen = next((s for s in sections if s.get("kind") == kind), None)
    if chosen is not None:
        return cls.model_validate({**chosen, "kind": kind}).model_dump(exclude={"layers"})
    shared = {k: v for k, v in sections[0].items() if k in cls.model_fields and k not in ("kind", "layers")
              and _fits(cls, {k: v, "kind": kind})}
    return cls.model_validate({**shared, "kind": kind}).model_dump(exclude={"layers"})


def _fits(cls: type[KindSection], data: dict[str, Any]) -> bool:
    try:
        cls.model_validate(data)
    except ValidationError:
        return False
    return True


def draft_view(data: dict[str, Any], inv: Inventory) -> dict[str, Any]:
    """A spec's data with the mixer and ffn sections the file's layers show, each from the spec's section
    of that kind (the last takes every layer the others do not)."""
    out = dict(data)
    for role in ROLES:
        parts = layout(inv, role)
        out[role] = [{**_part_section(data[role], role, p), **({"layers": p.layers} if i < len(parts) - 1 else {})}
                     for i, p in enumerate(parts)]
    return out


def _part_section(sections: list[dict[str, Any]], role: str, part: Part) -> dict[str, Any]:
    if not part.branches:
        return _section(sections, role, part.kind)
    chosen = next((s for s in sections if s.get("kind") == part.kind), None)
    if chosen is not None and [b.get("kind") for b in chosen.get("branches", [])] == list(part.branches):
        return _section(sections, role, part.kind)
    branches = [_section(sections, role, b) for b in part.branches]
    return kinds_of(role)[part.kind].model_validate({"kind": part.kind, "branches": branches}).model_dump(
        exclude={"layers"})
