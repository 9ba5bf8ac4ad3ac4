"""What every command shares: exit codes, printable text, common options."""

from __future__ import annotations

import argparse

EXIT_INVALID = 1  # the input is wrong (a spec, a file, an argument)
EXIT_INTERRUPTED = 130


def safe(text: object) -> str:
    """Printable text: metadata strings may hold bytes that are not UTF-8."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def add_spec_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec-dir", action="append", default=[], metavar="DIR",
                   help="extra directory of specs, searched before the packaged ones (repeatable; "
                        "TFB_SPEC_PATH adds more)")
