"""YAML spec -> validated `Spec`: read safely, resolve `extends`, validate, check, explain errors.

Errors name the file, line and column of the offending key, the field path, what is allowed, and the
nearest allowed word. A spec that extends another is checked as the merged whole, and each error points
into the file that set the offending value.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tfb.config import MAX_LAYERS
from tfb.errors import SpecError
from tfb.spec.base import LayerRule, selects
from tfb.spec.fields import FIELD_BY_NAME, FIELDS
from tfb.spec.kinds import FFN_KINDS, MIXER_KINDS
from tfb.spec.registry import find_spec_file, search_dirs
from tfb.spec.schema import Derived, HParam, Spec
from tfb.spec.slots import global_slots, layer_slots, possible_facts
from tfb.spec.suggest import did_you_mean
from tfb.spec.yamlfile import Key, Mark, read_yaml

NOT_INHERITED = ("name", "abstract", "match", "description", "extends")
MAX_EXTENDS_DEPTH = 16
MAX_SHOWN = 80  # characters of a spec's value quoted in a message
_SPEC_NAME = re.compile(r"\w[\w.-]{0,127}")


def load_spec(ref: str | Path, spec_dirs: Iterable[str | Path] = ()) -> Spec:
    """A validated spec from a path (`specs/x.yaml`) or a name looked up on the spec search path."""
    return load_spec_with_marks(ref, spec_dirs)[0]


def load_spec_with_marks(ref: str | Path, spec_dirs: Iterable[str | Path] = ()) -> tuple[Spec, dict[Key, Mark]]:
    """`load_spec`, and where each key of the merged spec was set: key path (`("tensors", "layer",
    "attn_q")`) -> file, line and column, in the file that set it (a base spec for inherited values)."""
    dirs = search_dirs(spec_dirs)
    path = resolve(ref, dirs)
    data, marks = _merged(path, dirs, chain=[])
    return _validate(data, marks, path), marks


def resolve(ref: str | Path, dirs: Sequence[Path], skip: Iterable[Path] = (), origin: str = "") -> Path:
    text = str(ref)
    as_path = Path(text)
    if text.endswith((".yaml", ".yml")) or _is_file(as_path) or "/" in text or "\\" in text:
        if not _is_file(as_path):
            raise SpecError(f"{origin}spec file {_shown(text)} does not exist")
        return as_path
    if not _SPEC_NAME.fullmatch(text):
        raise SpecError(f"{origin}`{_shown(text)}` is not a spec name (letters, digits, '_', '-', '.') nor a "
                        "path to a .yaml file")
    found = find_spec_file(text, dirs, skip)
    if found is None:
        from tfb.spec.registry import all_spec_files

        known = all_spec_files(dirs)
        raise SpecError(f"{origin}no spec named `{text}`{did_you_mean(text, known)}; "
                        f"known: {', '.join(sorted(known)) or 'none'} (searched {', '.join(map(str, dirs))})")
    return found


def _is_file(path: Path) -> bool:
    """Path.is_file() for any text a spec may hold: a name the OS refuses (too long, NUL) is no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _merged(path: Path, dirs: Sequence[Path], chain: list[Path]) -> tuple[dict[str, Any], dict[Key, Mark]]:
    if path.resolve() in [p.resolve() for p in chain]:
        cycle = " -> ".join(p.stem for p in [*chain, path])
        raise SpecError(f"{chain[-1]}: extends: `extends` makes a cycle: {cycle}; one of them must not extend")
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise SpecError(f"{path}: `extends` chain deeper than {MAX_EXTENDS_DEPTH}")
    data, marks = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1:1: a spec is a mapping of keys to values, not a {type(data).__name__}")
    if "name" in data and data["name"] != path.stem:
        raise SpecError(f"{marks[('name',)]}: name: `{data['name']}` differs from the file name "
                        f"`{path.stem}`; rename one of them")
    data = {**data, "name": path.stem}
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data, marks
    if not isinstance(parent_ref, str):
        raise SpecError(f"{marks[('extends',)]}: extends: give a spec name or path, not {_shown(repr(parent_ref))}")
    origin = f"{marks[('extends',)]}: extends: "
    base = Path(parent_ref) if parent_ref.endswith((".yaml", ".yml")) and not Path(parent_ref).is_absolute() \
        else None
    if base is not None and not _is_file(base):
        parent_ref = str(path.parent / base)  # a relative path is relative to the spec
    parent_path = resolve(parent_ref, dirs, skip=[*chain, path], origin=origin)
    parent_data, parent_marks = _merged(parent_path, dirs, [*chain, path])
    for key in NOT_INHERITED:
        parent_data.pop(key, None)
    return _merge(parent_data, data, parent_marks, marks)


def _atomic(key: Key) -> bool:
    """Values that a child replaces whole rather than merges: a derived rule and a tensor template."""
    return (len(key) == 3 and key[0] == "hparams" and key[2] == "default") or (len(key) == 3 and key[0] == "tensors")


def _merge(base: dict[str, Any], over: dict[str, Any], base_marks: dict[Key, Mark],
           over_marks: dict[Key, Mark]) -> tuple[dict[str, Any], dict[Key, Mark]]:
    """Deep merge of mappings; anything else in `over` replaces the base value and its marks."""
    marks = dict(base_marks)

    def merge(a: dict[str, Any], b: dict[str, Any], prefix: Key) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            key = (*prefix, k)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and not _atomic(key):
                out[k] = merge(out[k], v, key)
            else:
                for stale in [m for m in marks if m[: len(key)] == key]:
                    del marks[stale]
                out[k] = v
        return out

    merged = merge(base, over, ())
    marks.update(over_marks)
    return merged, marks


# -------------------------------------------------------------------------------------------- validation


def _validate(data: dict[str, Any], marks: dict[Key, Mark], path: Path) -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_explain(e, data, marks, path)) from None
    problems = check_spec(spec)
    if problems:
        lines = [f"{_mark_for(key, marks, path)}: {_dotted(key)}: {msg}" for key, msg in problems]
        raise SpecError("\n".join(lines))
    return spec


def check_spec(spec: Spec) -> list[tuple[Key, str]]:
    """Cross-field checks that pydantic's per-field validation cannot see."""
    problems: list[tuple[Key, str]] = []
    rules: dict[str, HParam] = {n: r for n, r in spec.hparams if r is not None}
    for name, rule in rules.items():
        field = FIELD_BY_NAME[name]
        default = rule.default
        if isinstance(default, Derived):
            for operand in default.fields():
                if operand not in FIELD_BY_NAME:
                    problems.append((("hparams", name, "default"), f"unknown config field `{_shown(operand)}` in "
                                     f"a derived rule{did_you_mean(operand, FIELD_BY_NAME)}"))
        elif default is not None and not _fits(default, field.kind, field.choices):
            allowed = f"one of {', '.join(field.choices)}" if field.choices else f"a {field.kind}"
            hint = did_you_mean(str(default), field.choices)
            problems.append((("hparams", name, "default"), f"{_shown(repr(default))} is not {allowed}{hint}"))
        elif not _in_range(default, field.range):
            problems.append((("hparams", name, "default"), f"{default!r} is out of range: `{name}` must be "
                             f"{field.range} ({field.doc})"))
    cycle = _find_cycle(rules)
    if cycle:
        problems.append((("hparams", cycle[0]), "derived rules form a cycle: " + " -> ".join(cycle)))
    problems += _layer_rules(spec)
    if spec.abstract:
        return problems
    for f in FIELDS:
        if f.default is None and f.name not in rules:
            problems.append((("hparams",), f"no rule for required config field `{f.name}` ({f.doc})"))
    problems += _contradictions(spec)
    problems += _missing_slots(spec)
    return problems


def _fits(value: object, kind: str, choices: tuple[str, ...]) -> bool:
    if kind == "str":
        return isinstance(value, str) and (not choices or value in choices)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_range(value: object, range_: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return not ((range_ == "positive" and value <= 0) or (range_ == "nonnegative" and value < 0))


def _find_cycle(rules: dict[str, HParam]) -> list[str]:
    def deps(name: str) -> list[str]:
        rule = rules.get(name)
        if rule is None or not isinstance(rule.default, Derived):
            return []
        return [f for f in rule.default.fields() if f in FIELD_BY_NAME]

    def visit(name: str, stack: list[str]) -> list[str]:
        if name in stack:
            return [*stack[stack.index(name):], name]
        for dep in deps(name):
            found = visit(dep, [*stack, name])
            if found:
                return found
        return []

    for name in rules:
        found = visit(name, [])
        if found:
            return found
    return []


# the config field kinds each layer rule can compare: `below`, `every` and `last` count layers
RULE_KINDS = {"below": ("int",), "every": ("int",), "nonzero": ("int", "float", "bool"),
              "zero": ("int", "float", "bool"), "last": ("int",)}


def _layer_rules(spec: Spec) -> list[tuple[Key, str]]:
    """Each `layers:` rule reads a config field that exists and is a number: a misspelt field would
    otherwise surface only when a file is loaded."""
    out: list[tuple[Key, str]] = []
    for role in ("mixer", "ffn"):
        sections = getattr(spec, role)
        for i, section in enumerate(sections):
            rule = section.layers
            if not isinstance(rule, LayerRule):
                continue
            for condition, name in rule.conditions():
                key: Key = (role, "layers", condition) if len(sections) == 1 else (role, i, "layers", condition)
                field = FIELD_BY_NAME.get(name)
                numeric = sorted(f.name for f in FIELDS if f.kind in RULE_KINDS[condition])
                if field is None:
                    out.append((key, f"`{_shown(name)}` is not a config field{did_you_mean(name, numeric)}; "
                                "a layer rule reads one, e.g. leading_dense_block_count"))
                elif field.kind not in RULE_KINDS[condition]:
                    out.append((key, f"`{name}` is a {field.kind} config field; a `{condition}` rule needs "
                                f"{' or '.join(RULE_KINDS[condition])} (a count of layers or a per-layer number)"))
        uncovered = _uncovered_layer(sections)
        if uncovered is not None:
            out.append(((role,), f"no section covers layer {uncovered} (the patterns repeat over the layers); "
                        "end the list with a section for the other layers (`layers: all`, the default)"))
    return out


def _uncovered_layer(sections: list[Any]) -> int | None:
    """The first layer that no section's pattern selects, when every section has a pattern (rules depend
    on the file's values and are checked when it is loaded)."""
    patterns = [s.layers for s in sections]
    if any(isinstance(p, LayerRule) for p in patterns) or any(p == [] for p in patterns):
        return None
    period = 1
    for p in patterns:
        if isinstance(p, list):
            period = math.lcm(period, len(p))
    for layer in range(min(period, MAX_LAYERS)):
        if not any(selects(p, layer, lambda name, i: 0) for p in patterns):
            return layer
    return None


def _contradictions(spec: Spec) -> list[tuple[Key, str]]:
    out: list[tuple[Key, str]] = []
    if spec.block.residual == "parallel" and spec.block.post_norm:
        out.append((("block", "post_norm"), "post-norms are not defined for a parallel residual; "
                    "use residual: sequential or post_norm: false"))
    if spec.block.residual == "parallel" and not spec.block.pre_norm:
        out.append((("block", "pre_norm"), "a parallel residual reads one pre-norm; set pre_norm: true"))
    if not spec.norm.parametric and spec.norm.bias != "none":
        out.append((("norm", "bias"), "a norm without weights (parametric: false) has no bias either"))
    for role in ("mixer", "ffn"):
        sections = getattr(spec, role)
        for i, section in enumerate(sections):
            where: Key = (role,) if len(sections) == 1 else (role, i)
            out += [((*where, *key), msg) for key, msg in section.problems()]
            if section.layers == []:
                out.append(((*where, "layers"), "an empty list of layers; write 'none' for no layers"))
    return out


def _missing_slots(spec: Spec) -> list[tuple[Key, str]]:
    out: list[tuple[Key, str]] = []
    seen: set[tuple[str, str]] = set()
    combos = [(facts, mixer, ffn) for facts in possible_facts(spec) for mixer in spec.mixer for ffn in spec.ffn]
    for facts, mixer, ffn in combos:
        for group, needs in (("global", global_slots(spec, facts)), ("layer", layer_slots(spec, facts, mixer, ffn))):
            templates = spec.tensors.global_ if group == "global" else spec.tensors.layer
            for slot in needs:
                if getattr(templates, slot) is None and (group, slot) not in seen:
                    seen.add((group, slot))
                    out.append((("tensors", group), f"the switches need tensor slot `{slot}` but it has no "
                                f"name template; add `{slot}: ...` under tensors.{group}"))
    for group in ("global", "layer"):
        group_templates: BaseModel = spec.tensors.global_ if group == "global" else spec.tensors.layer
        for slot in type(group_templates).model_fields:
            ref = getattr(group_templates, slot)
            if ref is None or ref.if_absent is None:
                continue
            slots = type(group_templates).model_fields
            if ref.if_absent not in slots:
                out.append((("tensors", group, slot, "if_absent"), f"`{ref.if_absent}` is not a slot of "
                            f"tensors.{group}{did_you_mean(ref.if_absent, slots)}"))
            elif getattr(group_templates, ref.if_absent) is None:
                out.append((("tensors", group, slot, "if_absent"),
                            f"names slot `{ref.if_absent}`, which has no name template in tensors.{group}"))
    return out


# ------------------------------------------------------------------------------------------ explanations

KIND_TAGS = {*MIXER_KINDS, *FFN_KINDS}
_PRIORITY = ("extra_forbidden", "literal_error", "value_error", "missing")


def _explain(error: ValidationError, data: dict[str, Any], marks: dict[Key, Mark], path: Path) -> str:
    best: dict[Key, dict[str, Any]] = {}
    for err in error.errors():
        key = _data_key(err["loc"], data)
        rank = _PRIORITY.index(err["type"]) if err["type"] in _PRIORITY else len(_PRIORITY)
        if key not in best or rank < best[key]["_rank"]:
            best[key] = {**err, "_rank": rank}
    # errors on a union's branches at a parent path are noise when a deeper path explains more
    keys = [k for k in best if not any(o != k and o[: len(k)] == k for o in best)]
    lines = []
    for key in sorted(keys, key=lambda k: _mark_for(k, marks, path).line):
        lines.append(f"{_mark_for(key, marks, path)}: {_dotted(key)}: {_message(best[key], key)}")
    return "\n".join(lines)


def _data_key(loc: tuple[int | str, ...], data: Any) -> Key:
    """The part of a pydantic location that exists in the data (drops union branch tags)."""
    key: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif part in KIND_TAGS:
            continue  # the tag of a `kind:` union branch
        elif isinstance(node, dict) and isinstance(part, str) and part.isidentifier() and part.islower() \
                and part not in ("str", "int", "float", "bool", "list", "dict"):
            key.append(part)  # a missing key: point at its parent, name it in the path
            break
        else:
            continue
        key.append(part)
    return tuple(key)


def _mark_for(key: Key, marks: dict[Key, Mark], path: Path) -> Mark:
    for n in range(len(key), -1, -1):
        if key[:n] in marks:
            return marks[key[:n]]
    return Mark(str(path), 1, 1)


def _dotted(key: Key) -> str:
    return ".".join(str(k) for k in key) or "(top level)"


def _message(err: dict[str, Any], key: Key) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    word = key[-1] if key else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(key[:-1])
        return (f"unknown key `{word}`{did_you_mean(str(word), allowed)}; allowed: {', '.join(allowed)}")
    if kind == "literal_error":
        allowed = [a.strip("'") for a in ctx.get("expected", "").replace(" or ", ", ").split(", ")]
        value = err.get("input")
        return f"`{_shown(value)}` is not allowed{did_you_mean(str(value), allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"missing required key `{word}`"
    msg = str(err["msg"]).removeprefix("Value error, ")
    doc = _field_doc(key)
    return msg + (f" (expected: {doc})" if doc and kind != "value_error" else "")


def _model_at(key: Key) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Spec
    for part in key:
        if model is None or isinstance(part, int):
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(key: Key) -> list[str]:
    model = _model_at(key)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items() if n != "name" or model is not Spec]


def _field_doc(key: Key) -> str:
    """The description of the nearest field on the path (list items explain themselves by their list)."""
    for n in range(len(key), 0, -1):
        model = _model_at(key[: n - 1])
        field = next((f for m, f in model.model_fields.items() if key[n - 1] in (m, f.alias)), None) \
            if model else None
        if field is not None and field.description:
            return field.description
    return ""
