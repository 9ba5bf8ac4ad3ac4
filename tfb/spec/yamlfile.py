"""Safe YAML reading that remembers where every value came from.

Specs may come from anywhere, so the reader is strict: PyYAML's safe loader only (libyaml's when
installed, for speed), a size cap, a depth and node cap checked on the event stream before anything is
built (deep nesting cannot exhaust the stack), no anchors or aliases (no "billion laughs"; `extends` is
the way to share), no tags beyond YAML's plain scalars, mappings and sequences (`!!python/...` is refused,
not ignored), no merge keys, no duplicate keys, and numbers of sane size. Every failure is a one-line
`SpecError` with file:line:column.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfb.errors import SpecError, location

MAX_BYTES = 256 * 1024  # the largest packaged spec is a few KB
MAX_DEPTH = 32
MAX_EVENTS = 20_000  # a spec has a few hundred; this bounds parse time at well under a second
MAX_SCALAR_CHARS = 4096  # longer numbers are refused before Python parses them (int() is quadratic)

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CORE = "tag:yaml.org,2002:"
SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
COLLECTION_TAGS = {_CORE + "map", _CORE + "seq"}

# what YAML 1.1 accepts as text (PyYAML's reader check): control characters and the like are not
_NOT_YAML_TEXT = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")

Key = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return location(self.file, self.line, self.column)


def read_yaml(path: Path) -> tuple[Any, dict[Key, Mark]]:
    """The document in `path` as plain Python data, and the mark of every key path in it."""
    raw = _read_capped(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_yaml(text, str(path))


def _read_capped(path: Path) -> bytes:
    """At most MAX_BYTES of a regular file. A FIFO or device would block or never end: opened without
    blocking, checked, refused; the cap is enforced on what is read, not on what stat() said."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError(f"{path}: not a regular file")
        try:
            raw = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(f"{path}: over the {MAX_BYTES}-byte limit for a spec")
    return raw


def parse_yaml(text: str, filename: str) -> tuple[Any, dict[Key, Mark]]:
    if len(text) > MAX_BYTES:
        raise SpecError(f"{filename}: over the {MAX_BYTES}-character limit for a spec")
    try:
        _check_events(text, filename)
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        raise SpecError(_yaml_problem(e, text, filename)) from None
    marks: dict[Key, Mark] = {}
    if node is None:
        return None, marks
    return _Converter(filename, marks).convert(node, ()), marks


def _yaml_problem(error: yaml.YAMLError, text: str, filename: str) -> str:
    """One line: where, and PyYAML's reason without its multi-line context."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = location(filename, mark.line + 1, mark.column + 1) if mark else filename
        reason = error.problem or error.context or "malformed"
    elif isinstance(error, yaml.reader.ReaderError):
        # libyaml counts bytes, PyYAML characters: find the character again to give line and column
        found = _NOT_YAML_TEXT.search(text)
        at = found.start() if found else 0
        line, column = text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
        where = location(filename, line, column)
        reason = f"character U+{ord(found.group()):04X} is not allowed in YAML" if found else error.reason
    else:
        where, reason = filename, str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = " ".join(str(reason).split())
    if "maximum nesting depth" in reason:  # libyaml's own cap (1000) fired before our event check saw 32
        return f"{where}: nesting deeper than {MAX_DEPTH} levels"
    return f"{where}: invalid YAML: {reason}"


def _check_events(text: str, filename: str) -> None:
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=_LOADER)):
        mark = event.start_mark
        where = location(filename, mark.line + 1, mark.column + 1) if mark else filename
        if count > MAX_EVENTS:
            raise SpecError(f"{where}: more than {MAX_EVENTS} YAML nodes; a spec is a short file")
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecError(f"{where}: YAML anchors and aliases are not allowed in specs; "
                            "share settings with `extends:` instead")
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in SCALAR_TAGS | COLLECTION_TAGS and tag != "!":
            raise SpecError(f"{where}: the YAML tag `{_short(tag)}` is not allowed in a spec; "
                            "write plain values")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(f"{where}: nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _short(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Converter:
    """Node tree -> plain data, with marks; scalars are typed by PyYAML's safe constructor."""

    def __init__(self, filename: str, marks: dict[Key, Mark]) -> None:
        self.filename = filename
        self.marks = marks
        self.constructor = yaml.SafeLoader("")

    def mark(self, node: yaml.Node) -> Mark:
        return Mark(self.filename, node.start_mark.line + 1, node.start_mark.column + 1)

    def convert(self, node: yaml.Node, key: Key) -> Any:
        self.marks.setdefault(key, self.mark(node))
        if isinstance(node, yaml.MappingNode):
            self.expect_tag(node, COLLECTION_TAGS)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                name = self.scalar(key_node)
                if not isinstance(name, (str, int)) or isinstance(name, bool):
                    raise SpecError(f"{self.mark(key_node)}: mapping keys must be plain words, got {name!r}")
                if name in out:
                    raise SpecError(f"{self.mark(key_node)}: key `{name}` appears twice in the same mapping")
                sub = (*key, name)
                self.marks[sub] = self.mark(key_node)
                out[name] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            self.expect_tag(node, COLLECTION_TAGS)
            return [self.convert(item, (*key, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def expect_tag(self, node: yaml.Node, allowed: set[str]) -> None:
        if node.tag not in allowed:
            if node.tag == _CORE + "merge":
                raise SpecError(f"{self.mark(node)}: merge keys (<<) are not allowed in a spec; use `extends:`")
            raise SpecError(f"{self.mark(node)}: the YAML type `{_short(node.tag)}` is not allowed in a spec; "
                            "write plain values (quote text that YAML reads as a date or bytes)")

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError(f"{self.mark(node)}: mapping keys must be plain words")
        if node.tag not in SCALAR_TAGS:
            # implicit timestamps and binary, or anything an explicit tag asked for: quote it to mean text
            self.expect_tag(node, SCALAR_TAGS)
        if node.tag != _CORE + "str" and len(node.value) > MAX_SCALAR_CHARS:
            raise SpecError(f"{self.mark(node)}: a number of {len(node.value)} characters is not a spec value")
        try:
            value = self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            reason = " ".join(str(getattr(e, "problem", None) or e).split())
            raise SpecError(f"{self.mark(node)}: cannot read this value ({reason})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{self.mark(node)}: {node.value} is not a finite number")
        if isinstance(value, str) and _has_surrogates(value):
            raise SpecError(f"{self.mark(node)}: the text holds an unpaired surrogate escape, which is not Unicode")
        return value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
