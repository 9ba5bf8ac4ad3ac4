"""Commands for spec authors: check a spec against a file."""

from __future__ import annotations

import argparse
from typing import Any

from tfb.cli.common import EXIT_INVALID, add_spec_dirs, safe
from tfb.errors import InputError


def run_check(args: argparse.Namespace) -> int:
    from tfb.authoring.check import check

    if len(args.paths) > 2:
        raise InputError("tfb check takes [SPEC] MODEL.gguf")
    spec, model = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    report = check(model, spec, args.spec_dir)
    for line in report.lines(verbose=args.verbose):
        print(safe(line))
    return 0 if report.ok else EXIT_INVALID


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="check a spec against a GGUF file: tensors, shapes, storage types, "
                       "metadata keys, config; one line per problem, exit 1 on any")
    p.add_argument("paths", nargs="+", metavar="[SPEC] MODEL", help="spec name or path (default: the spec "
                   "serving the file's general.architecture), then a .gguf file")
    p.add_argument("-v", "--verbose", action="store_true", help="one note per absent key, with its rule's line")
    add_spec_dirs(p)
    p.set_defaults(run=run_check)
