"""Safe YAML reading that remembers where every value came from.

Specs may come from anywhere, so the reader is strict: PyYAML's safe loader only, a size cap, a depth and
node cap checked on the event stream before anything is built (deep nesting cannot exhaust the stack),
no anchors or aliases (no "billion laughs"; `extends` is the way to share), no duplicate keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfb.errors import SpecError, location

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_EVENTS = 100_000

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
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError(f"{path}: {size} bytes is over the {MAX_BYTES}-byte limit for a spec")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, filename: str) -> tuple[Any, dict[Key, Mark]]:
    try:
        _check_events(text, filename)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = location(filename, mark.line + 1, mark.column + 1) if mark else filename
        raise SpecError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{filename}: invalid YAML: {e}") from None
    marks: dict[Key, Mark] = {}
    if node is None:
        return None, marks
    return _Converter(filename, marks).convert(node, ()), marks


def _check_events(text: str, filename: str) -> None:
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader)):
        mark = event.start_mark
        where = location(filename, mark.line + 1, mark.column + 1) if mark else filename
        if count > MAX_EVENTS:
            raise SpecError(f"{where}: more than {MAX_EVENTS} YAML nodes; a spec is a short file")
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecError(f"{where}: YAML anchors and aliases are not allowed in specs; "
                            "share settings with `extends:` instead")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(f"{where}: nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


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
            return [self.convert(item, (*key, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError(f"{self.mark(node)}: mapping keys must be plain words")
        value = self.constructor.construct_object(node)
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise SpecError(f"{self.mark(node)}: only strings, numbers, booleans and null may appear in a "
                            f"spec, got {type(value).__name__}")
        return value
