"""Commands for spec authors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tfb.cli.common import EXIT_INVALID, add_spec_dirs, safe
from tfb.errors import TfbError


def run_validate(args: argparse.Namespace) -> int:
    from tfb.spec import load_spec

    failed = 0
    for path in args.paths:
        try:
            spec = load_spec(path, args.spec_dir)
        except TfbError as e:
            failed += 1
            print(safe(e), file=sys.stderr)
            continue
        parent = f", extends {spec.extends}" if spec.extends else ""
        kind = "abstract base" if spec.abstract else f"serves {', '.join(spec.match) or 'no architecture'}"
        print(f"OK {path} ({spec.name}: {kind}{parent})")
    return EXIT_INVALID if failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check spec files: one OK line each, or the errors with file:line:column")
    p.add_argument("paths", nargs="+", metavar="SPEC", help="spec files (or names on the spec path)")
    add_spec_dirs(p)
    p.set_defaults(run=run_validate)
