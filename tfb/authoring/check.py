"""`tfb check SPEC MODEL.gguf`: does a spec fit a file, and if not, where exactly not.

Metadata keys (present, defaulted or missing), the config they give (head counts and sizes
consistent), and every tensor (present, right shape, a storage type tfb loads, none left unread). Each
problem names the tensor or key, what was expected, what was found, and the spec line that asked for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tfb.authoring.check_keys import build_checked_config, finish_notes, scan_keys
from tfb.authoring.check_tensors import check_tensors
from tfb.authoring.findings import Finding, group_layers, show_mark, show_path
from tfb.sources import WeightSource, open_source
from tfb.spec.loader import load_spec_with_marks
from tfb.spec.match import match_architecture
from tfb.spec.registry import find_spec_file, search_dirs
from tfb.spec.schema import Spec
from tfb.spec.yamlfile import Key, Mark


@dataclass(frozen=True)
class CheckReport:
    spec: Spec
    spec_file: str
    model: str
    findings: tuple[Finding, ...]
    tensors_checked: int
    keys_read: int
    defaults: tuple[str, ...]  # "field = value" for each config field whose keys the file lacks

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        n = len(self.problems)
        verdict = "OK" if self.ok else f"{n} problem{'s' * (n != 1)}"
        return (f"{verdict}: spec {self.spec.name} ({self.spec_file}) on {self.model}: {self.tensors_checked} "
                f"tensors checked, {self.keys_read} metadata keys read, {len(self.defaults)} defaulted")

    def lines(self, verbose: bool = False) -> list[str]:
        """Errors, then notes (with `verbose`, one per defaulted key with its rule's line; else one line
        for all defaults), then the summary."""
        keys = [f for f in self.findings if f.severity == "note" and f.subject.startswith("key ")]
        shown = [str(f) for f in self.findings if verbose or f not in keys]
        if keys and not verbose:
            shown.append(f"{self.model}: note: defaults for absent keys: {', '.join(self.defaults)} "
                         "(-v: each key and the spec line of its rule)")
        return [*shown, self.summary()]


def _spec_with_marks(gguf: WeightSource, spec: str | Path | None,
                     spec_dirs: Iterable[str | Path]) -> tuple[Spec, dict[Key, Mark]]:
    dirs = tuple(spec_dirs)
    if spec is not None:
        return load_spec_with_marks(spec, dirs)
    matched = match_architecture(gguf.architecture or "", dirs, where=str(gguf.path))
    path = find_spec_file(matched.name, search_dirs(dirs))
    return load_spec_with_marks(path or matched.name, dirs)


def check(model: str | Path, spec: str | Path | None = None, spec_dirs: Iterable[str | Path] = ()) -> CheckReport:
    """Check `spec` (default: the spec serving the file's architecture) against a GGUF file or a checkpoint
    directory (read through its naming table as the GGUF file the converter would write)."""
    with open_source(model, spec_dirs) as gguf:
        chosen, marks = _spec_with_marks(gguf, spec, spec_dirs)
        spec_file = show_path(marks[()].file) if () in marks else chosen.name
        model_path = str(gguf.path)
        arch = gguf.architecture or chosen.name
        findings: list[Finding] = []
        if chosen.abstract:
            findings.append(Finding("error", spec_file, "spec", "abstract (a base to extend); it cannot run a "
                                    "model; check a spec that extends it"))
            return CheckReport(chosen, spec_file, model_path, tuple(findings), 0, 0, ())
        if gguf.architecture is not None and gguf.architecture not in chosen.match:
            where = show_mark(marks[("match",)]) if ("match",) in marks else spec_file
            findings.append(Finding("note", where, "match", f"does not list `{gguf.architecture}`; tfb.load picks "
                                    "this spec for the file only when asked (spec= or --spec)"))
        keys = scan_keys(chosen, marks, gguf.metadata, arch, spec_file)
        build_checked_config(chosen, marks, gguf.metadata, gguf.tensors.keys(), arch, model_path, spec_file, keys)
        finish_notes(keys)
        findings += keys.findings
        checked = 0
        if keys.config is not None:
            tensors = check_tensors(chosen, marks, gguf, keys.config, spec_file)
            findings += group_layers(tensors.findings, keys.config.n_layers)
            checked = tensors.checked
        else:
            findings.append(Finding("note", model_path, "tensors", "not checked: the metadata gives no usable "
                                    "config (see the problems above)"))
    return CheckReport(chosen, spec_file, model_path, tuple(_ordered(findings)), checked, len(keys.read),
                       tuple(keys.default_values))


def _ordered(findings: list[Finding]) -> list[Finding]:
    """Errors first, then notes; each in the order found."""
    return [f for f in findings if f.severity == "error"] + [f for f in findings if f.severity == "note"]

