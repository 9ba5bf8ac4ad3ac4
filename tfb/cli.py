"""The `tfb` command line. Commands import what they need lazily: `tfb validate` never imports torch.

Errors from bad input are tfb errors: the message is printed on one line per problem, the exit status
is non-zero, and a traceback appears only with --debug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tfb.errors import TfbError

EXIT_INVALID = 1  # the input is wrong (a spec, a file, an argument)
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], None]],
                                               Callable[[argparse.ArgumentParser], None]]:
    """Register a subcommand: the decorated function adds its arguments; `run_<name>` runs it."""

    def wrap(add_args: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
        runner = globals()[f"run_{name.replace('-', '_')}"]
        COMMANDS[name] = (runner, add_args, help)
        return add_args

    return wrap


def safe(text: object) -> str:
    """Printable text: metadata strings may hold bytes that are not UTF-8."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def spec_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec-dir", action="append", default=[], metavar="DIR",
                   help="extra directory of specs, searched before the packaged ones (repeatable; "
                        "TFB_SPEC_PATH adds more)")


# ---------------------------------------------------------------------------------------------- validate


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


@command("validate", "check spec files: one OK line each, or the errors with file:line:column")
def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="SPEC", help="spec files (or names on the spec path)")
    spec_dir_args(p)


# ----------------------------------------------------------------------------------------------- inspect


def run_inspect(args: argparse.Namespace) -> int:
    from tfb.gguf.inspect import report

    print(safe(report(args.model, spec=args.spec, spec_dirs=tuple(args.spec_dir), all_layers=args.all_layers)))
    return 0


@command("inspect", "show a GGUF file: architecture, matching spec, config, tokenizer and tensors")
def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a .gguf file")
    p.add_argument("--spec", help="spec name or path (default: the one serving general.architecture)")
    p.add_argument("--all-layers", action="store_true", help="list every layer's tensors, not only the first")
    spec_dir_args(p)


# ------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfb", description="Run LLM architectures from GGUF files; "
                                     "one YAML spec per architecture family.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, add_args, help) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help, description=help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = COMMANDS[args.command][0]
    try:
        return runner(args)
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


if __name__ == "__main__":
    sys.exit(main())
