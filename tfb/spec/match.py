"""Which spec serves a file: the one asked for, or the first on the search path that lists the file's
general.architecture in its `match`."""

from __future__ import annotations

from pathlib import Path

from tfb.errors import TfbError
from tfb.sources import WeightSource
from tfb.spec.loader import load_spec
from tfb.spec.registry import all_spec_files, search_dirs
from tfb.spec.schema import Spec
from tfb.spec.suggest import did_you_mean

SpecRef = Spec | str | Path | None


def spec_for_file(gguf: WeightSource, spec: SpecRef = None, spec_dirs: tuple[str | Path, ...] = ()) -> Spec:
    if isinstance(spec, Spec):
        chosen = spec
    elif spec is not None:
        chosen = load_spec(spec, spec_dirs)
    else:
        arch = gguf.architecture
        if arch is None:
            raise TfbError(f"{gguf.path}: metadata general.architecture is missing; pass a spec (spec= or "
                           "--spec) to say how to run it")
        chosen = match_architecture(arch, spec_dirs, where=str(gguf.path))
    if chosen.abstract:
        raise TfbError(f"spec `{chosen.name}` is abstract (a base to extend) and cannot run a model")
    return chosen


def match_architecture(arch: str, spec_dirs: tuple[str | Path, ...] = (), where: str = "") -> Spec:
    known: dict[str, Spec] = {}
    for path in all_spec_files(search_dirs(spec_dirs)).values():
        candidate = load_spec(path, spec_dirs)
        for served in candidate.match:
            known.setdefault(served, candidate)
    if arch in known:
        return known[arch]
    raise TfbError(f"{where}: no spec serves architecture `{arch}`{did_you_mean(arch, known)}; known: "
                   f"{', '.join(sorted(known))}. Write specs/{arch}.yaml (see docs/spec-language.md) or pass "
                   "a spec (spec= or --spec)")
