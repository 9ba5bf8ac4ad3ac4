"""Where specs are found: user directories first, then the specs shipped with tfb.

User directories come from `TFB_SPEC_PATH` (os.pathsep-separated) and from explicit `spec_dirs`
arguments (the CLI's `--spec-dir`). A user spec with a packaged spec's name overrides it, and may
`extends:` it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

ENV_VAR = "TFB_SPEC_PATH"


def packaged_dir() -> Path:
    """The specs shipped with tfb: `tfb/specfiles` when installed, the repository's `specs/` in a checkout
    or an editable install (setuptools maps the folder at build time only)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "specfiles"
    return installed if installed.is_dir() else package.parent / "specs"


def search_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    dirs = [Path(d) for d in extra]
    dirs += [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    dirs.append(packaged_dir())
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def find_spec_file(name: str, dirs: Sequence[Path], skip: Iterable[Path] = ()) -> Path | None:
    """The first `NAME.yaml` in `dirs`, ignoring files in `skip` (a spec extending its namesake)."""
    skipped = {p.resolve() for p in skip}
    for d in dirs:
        candidate = d / f"{name}.yaml"
        if candidate.is_file() and candidate.resolve() not in skipped:
            return candidate
    return None


def all_spec_files(dirs: Sequence[Path]) -> dict[str, Path]:
    """Every visible spec by name; a name in an earlier directory hides the same name later."""
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for path in sorted(d.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found
