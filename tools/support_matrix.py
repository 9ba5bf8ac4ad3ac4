"""Generate docs/support-matrix.md: the packaged families x their switches, from the specs themselves.

    python tools/support_matrix.py          # rewrite docs/support-matrix.md
    python tools/support_matrix.py --check  # exit 1 when the file is stale

The table comes from tfb.authoring.summary (the same words as `tfb specs`) through the jinja2 template
tools/support-matrix.md.j2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tfb.authoring.summary import COLUMNS, NONE, switches  # noqa: E402
from tfb.spec import load_spec  # noqa: E402

TEMPLATE = Path(__file__).resolve().parent / "support-matrix.md.j2"
OUTPUT = ROOT / "docs" / "support-matrix.md"


def render(spec_dir: Path = ROOT / "specs") -> str:
    rows, bases = [], []
    for path in sorted(spec_dir.glob("*.yaml")):
        spec = load_spec(path)
        if spec.abstract:
            bases.append(spec.name)
            continue
        rows.append({"name": spec.name, "serves": ", ".join(f"`{m}`" for m in spec.match) or NONE,
                     "extends": f"`{spec.extends}`" if spec.extends else NONE, "switches": switches(spec)})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(TEMPLATE.read_text()).render(rows=rows, bases=bases, columns=COLUMNS)


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
