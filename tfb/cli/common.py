"""What every command shares: exit codes, printable text, common options."""

from __future__ import annotations

import argparse
import re

EXIT_INVALID = 1  # the input is wrong (a spec, a file, an argument)
EXIT_INTERRUPTED = 130


def safe(text: object) -> str:
    """Printable text: metadata strings may hold bytes that are not UTF-8, and control or bidi characters
    that would drive the terminal (escape sequences) or disguise the text; those are shown escaped."""
    return _CONTROL.sub(_escape, str(text).encode("utf-8", "backslashreplace").decode("utf-8"))


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def add_spec_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec-dir", action="append", default=[], metavar="DIR",
                   help="extra directory of specs, searched before the packaged ones (repeatable; "
                        "TFB_SPEC_PATH adds more)")
