"""A drafted spec as YAML: only what differs from the base, each line with the evidence behind it, and
a header that lists every assumption with the option that changes it."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tfb.authoring.draft import ASSUMPTIONS, Decision, Draft, generic, infer
from tfb.authoring.draft_layout import ROLES, draft_view, kinds_of, section_path, set_path
from tfb.authoring.inventory import Inventory
from tfb.errors import SpecError
from tfb.gguf.reader import GGUFFile
from tfb.spec.loader import load_spec, resolve
from tfb.spec.registry import all_spec_files, packaged_dir, search_dirs
from tfb.spec.schema import Spec
from tfb.spec.yamlfile import read_yaml

SECTIONS = ("norm", "embedding", "mixer", "ffn", "block", "output")
_SAME = object()


def default_base() -> str:
    """The packaged abstract base that extends nothing: llama.cpp's shared conventions."""
    roots = []
    for name, path in all_spec_files([packaged_dir()]).items():
        data, _ = read_yaml(path)  # only the two top-level keys: the families' switches stay unread
        if isinstance(data, dict) and data.get("abstract") is True and data.get("extends") is None:
            roots.append(name)
    if len(roots) != 1:
        raise SpecError(f"cannot choose a base spec among {', '.join(roots) or 'none'}; pass --extends SPEC")
    return roots[0]


def flow(value: Any) -> str:
    """One YAML value on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def _diff(base: Any, want: Any) -> Any:
    if isinstance(base, dict) and isinstance(want, dict):
        out = {k: d for k, v in want.items() if (d := _diff(base.get(k), v)) is not _SAME}
        return out or _SAME
    return _SAME if base == want else want


class _Writer:
    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.raw = draft.base.model_dump(by_alias=True)
        self.base = draft_view(self.raw, draft.inventory)
        self.lines: list[str] = []

    def comment(self, path: str) -> str:
        decisions = self.draft.decisions
        mine = [d for d in decisions if d.path == path or d.path.startswith(path + ".")]
        mine = mine or [d for d in decisions if path.startswith(d.path + ".")]
        notes: list[str] = []
        for d in mine:
            note = f"assumed ({d.option}), see above" if d.assumed else d.why
            if note not in notes:
                notes.append(note)
        return f"  # {'; '.join(notes)}" if notes else ""

    def emit(self, mapping: dict[str, Any], path: str, indent: int, flow_depth: int | None) -> None:
        """Block mappings (down to `flow_depth` dots in the path), one value per line with its evidence."""
        pad = " " * indent
        for key, value in mapping.items():
            sub = f"{path}.{key}" if path else key
            depth = sub.count(".")
            if isinstance(value, dict) and value and (flow_depth is None or depth < flow_depth):
                self.lines.append(f"{pad}{key}:")
                self.emit(value, sub, indent + 2, flow_depth)
            else:
                self.lines.append(f"{pad}{key}: {flow(value)}{self.comment(sub)}")

    def decided(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.draft.decisions:
            if d.path.startswith(prefix + ".") and not d.assumed:
                set_path(out, d.path, d.value)
        return out.get(prefix, {})

    def render(self, extends: str, description: str, spec_file: str) -> str:
        inv = self.draft.inventory
        self.lines = self.header(extends, spec_file)
        self.lines += [f"extends: {flow(extends)}", f"description: {flow(description)}", f"match: [{flow(inv.arch)}]"]
        hparams = self.decided("hparams")
        if hparams:
            self.lines += ["", "hparams:"]
            self.emit(hparams, "hparams", 2, flow_depth=1)
        self.lines.append("")
        start = len(self.lines)
        for section in SECTIONS:
            if section in ROLES:
                self.sections(section)
            elif (d := _diff(self.base.get(section), self.draft.data.get(section))) is not _SAME:
                self.emit({section: d}, "", 0, flow_depth=None)
        if len(self.lines) == start:
            self.lines.pop()
        tensors = self.decided("tensors")
        if tensors:
            self.lines += ["", "tensors:"]
            self.emit(tensors, "tensors", 2, flow_depth=2)
        if self.draft.unread_keys:
            self.lines += ["", "# Keys in the file that no rule reads (llama.cpp may use them in code; add hparams "
                           "rules for those that matter):"]
            self.lines += [f"#   {k}" for k in self.draft.unread_keys]
        return "\n".join(self.lines) + "\n"

    def sections(self, role: str) -> None:
        """`mixer:` or `ffn:`: the changes to the base's one section of the same kind, else every section in
        full (a child's section or list replaces the base's list), each with its kind and layers."""
        want: list[dict[str, Any]] = self.draft.data[role]
        raw = self.raw[role]
        if len(want) == 1 and len(raw) == 1 and raw[0]["kind"] == want[0]["kind"]:
            changed = _diff(self.base[role][0], want[0])
            if changed is not _SAME:
                self.lines.append(f"{role}:")
                self.emit(changed, role, 2, flow_depth=None)
            return
        self.lines.append(f"{role}:")
        for i, section in enumerate(want):
            lead, pad = ("  ", "  ") if len(want) == 1 else ("  - ", "    ")
            self.section(role, section, section_path(role, i, len(want)), lead, pad)

    def section(self, role: str, section: dict[str, Any], path: str, lead: str, pad: str) -> None:
        """One section in full: its kind, its layers, the settings that differ from the kind's defaults,
        and its branches (each a section of its own)."""
        kind = section["kind"]
        rest = {k: v for k, v in section.items() if k not in ("kind", "layers", "branches")}
        defaults = kinds_of(role)[kind].model_validate({**rest, "kind": kind, "branches": section.get("branches", [])}
                                                       if "branches" in section else {})
        changed = _diff(defaults.model_dump(exclude={"layers", "branches"}), rest)
        self.lines.append(f"{lead}kind: {flow(kind)}{self.comment(f'{path}.kind')}")
        if "layers" in section:
            self.lines.append(f"{pad}layers: {flow(section['layers'])}{self.comment(f'{path}.layers')}")
        if changed is not _SAME:
            self.emit(changed, path, len(pad), flow_depth=None)
        if "branches" in section:
            self.lines.append(f"{pad}branches:  # the layer's tensors show both kinds: they run side by side")
            for j, branch in enumerate(section["branches"]):
                self.section(role, {k: v for k, v in branch.items() if k != "layers"}, f"{path}.branches.{j}",
                             f"{pad}  - ", f"{pad}    ")

    def header(self, extends: str, spec_file: str) -> list[str]:
        inv = self.draft.inventory
        out = [f"# Drafted by `tfb draft` from {Path(inv.path).name} (general.architecture: {inv.arch}) over "
               f"`{extends}`.", f"# Review it, then run: tfb check {spec_file} {inv.path}"]
        assumed = [d for d in self.draft.decisions if d.assumed]
        if assumed:
            out += ["#", "# Not settled by the file, so assumed (confirm each in llama.cpp's source for "
                    f"`{inv.arch}`;", "# change it here or draft again with the option):"]
            for d in assumed:
                out.append(f"#   {d.path} = {flow(d.value)}   ({d.option})")
                out += textwrap.wrap(ASSUMPTIONS[generic(d.path)][1], 100, break_on_hyphens=False,
                                     initial_indent="#       ", subsequent_indent="#       ")
        out.append("")
        return out


def render(draft: Draft, extends: str, description: str, spec_file: str = "THIS_FILE") -> str:
    return _Writer(draft).render(extends, description, spec_file)


def _extends_ref(ref: str, base_path: Path, out: Path | None) -> str:
    """How the draft names its base: as given when it is a name, else a path relative to the draft."""
    if not (ref.endswith((".yaml", ".yml")) or os.sep in ref or "/" in ref):
        return ref
    start = out.resolve().parent if out is not None else Path.cwd()
    return os.path.relpath(base_path.resolve(), start)


def draft_spec(model: str | Path, extends: str | None = None, spec_dirs: Iterable[str | Path] = (),
               given: dict[str, Any] | None = None, out: Path | None = None) -> tuple[str, Draft]:
    """The YAML text of a drafted spec for `model`, and the decisions behind it."""
    dirs = tuple(spec_dirs)
    ref = extends or default_base()
    base_path = resolve(ref, search_dirs(dirs))
    base: Spec = load_spec(base_path, dirs)
    with GGUFFile(model) as gguf:
        inv = Inventory.read(gguf)
        name = gguf.metadata.get("general.name")
        draft = infer(inv, base, given)
    named = f"{name.value}, " if name is not None and isinstance(name.value, str) else ""
    description = f"{inv.arch} ({named}drafted from {Path(model).name})"
    text = render(draft, _extends_ref(ref, base_path, out), description, str(out) if out else "THIS_FILE")
    return text, draft


__all__ = ["Decision", "default_base", "draft_spec", "render"]
