"""The `tfb` command line. Each module here adds commands; they import what they need lazily, so that
`tfb validate` never imports torch.

Bad input raises tfb errors: the message is printed (one line per problem), the exit status is non-zero,
and a traceback appears only with --debug.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from tfb.cli import authoring, files, generate, serve, specs
from tfb.cli.common import EXIT_INTERRUPTED, EXIT_INVALID, safe
from tfb.errors import TfbError

MODULES = (specs, authoring, files, generate, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfb", description="Run LLM architectures from GGUF files; "
                                     "one YAML spec per architecture family.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    text = str(message)
    print(safe(text if text.startswith("tfb: ") else f"tfb: warning: {text}"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # one plain line per warning, as errors are printed
        if not args.debug:
            warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args))
    except TfbError as e:
        if args.debug:
            raise
        print(f"tfb: {safe(e)}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("\ntfb: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
