"""Generate docs/support-matrix.md: the packaged families x their switches, from the specs themselves,
and the map of llama.cpp's decoder-only text architectures with what each still misses.

    python tools/support_matrix.py          # rewrite docs/support-matrix.md
    python tools/support_matrix.py --check  # exit 1 when the file is stale

The switch table comes from tfb.authoring.summary (the same words as `tfb specs`), the architecture map
from tools/architecture_map.py (the hand-written tools/llama_cpp_architectures.yaml against the specs and
tfb's kinds), both through the jinja2 template tools/support-matrix.md.j2.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
from architecture_map import ArchitectureData, available_kinds, load_data, statuses

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tfb.authoring.summary import COLUMNS, NONE, switches  # noqa: E402
from tfb.spec import load_spec  # noqa: E402

TEMPLATE = Path(__file__).resolve().parent / "support-matrix.md.j2"
OUTPUT = ROOT / "docs" / "support-matrix.md"


def _code(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names) or NONE


def architecture_map(data: ArchitectureData, spec_dir: Path,
                     kinds: tuple[frozenset[str], frozenset[str]] | None = None) -> dict[str, Any]:
    """What the template's second section shows: a row per architecture, the summary counts, what remains
    (each missing kind or feature with the architectures that need it) and the glossary."""
    kinds = kinds or available_kinds()
    found = statuses(data, spec_dir, kinds)
    rows, needed_by, only_gap = [], defaultdict(list), defaultdict(list)
    for file, entry in sorted(data.architectures.items(), key=lambda item: item[1].arch[0]):
        state = found[file]
        names = _code(entry.arch) + ("" if entry.arch == [file] else f" ({file}.cpp)")
        rows.append({"names": names, "status": state.text(), "mixer": _code(entry.mixer), "ffn": _code(entry.ffn),
                     "features": _code(entry.features), "note": entry.note})
        for name in state.missing:
            needed_by[name].append(entry.arch[0])
        if len(state.missing) == 1 and state.spec is None:
            only_gap[state.missing[0]].append(entry.arch[0])
    served = sum(s.spec is not None for s in found.values())
    ready = sum(s.spec is None and not s.missing for s in found.values())
    remains = [{"name": name, "archs": _code(archs), "count": len(archs), "unlocks": _code(only_gap[name])}
               for name, archs in sorted(needed_by.items(), key=lambda item: (-len(item[1]), item[0]))]
    mixers, ffns = kinds
    glossary = [{"name": n, "what": what, "has": n in has, "meaning": m}
                for what, names, has in (("mixer kind", data.mixer_kinds, mixers), ("ffn kind", data.ffn_kinds, ffns),
                                         ("feature", data.features, set(data.spec_features)))
                for n, m in names.items()]
    return {"rows": rows, "total": len(rows), "served": served, "ready": ready, "blocked": len(rows) - served - ready,
            "remains": remains, "glossary": glossary, "skipped": data.skipped,
            "version": data.llama_cpp_python}


def render(spec_dir: Path = ROOT / "specs", data: ArchitectureData | None = None) -> str:
    rows, bases = [], []
    for path in sorted(spec_dir.glob("*.yaml")):
        spec = load_spec(path)
        if spec.abstract:
            bases.append(spec.name)
            continue
        rows.append({"name": spec.name, "serves": ", ".join(f"`{m}`" for m in spec.match) or NONE,
                     "extends": f"`{spec.extends}`" if spec.extends else NONE, "switches": switches(spec)})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    archs = architecture_map(data or load_data(), spec_dir)
    return env.from_string(TEMPLATE.read_text()).render(rows=rows, bases=bases, columns=COLUMNS, archs=archs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python tools/support_matrix.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
