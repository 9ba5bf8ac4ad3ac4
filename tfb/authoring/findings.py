"""What `tfb check` reports: one finding per problem or note, each pointing at the place to fix.

A finding's place is a spec location (`file:line:column`, the line that asked for the tensor or key, in
whichever file of the `extends` chain set it) or, when no spec line is to blame, the model file. Findings
that differ only in the layer index are shown once, with the layers they concern.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Literal

from tfb.spec.yamlfile import Mark

Severity = Literal["error", "note"]
_LAYER = re.compile(r"\bblk\.(\d+)\.")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str  # spec file:line:column, or the model file
    subject: str  # "tensor blk.0.attn_q.weight", "key x.attention.head_count", "config"
    message: str
    layers: tuple[int, ...] = ()  # set when grouped over layers

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.subject}: {self.message}"


def show_path(path: str) -> str:
    """A path relative to the working directory when it lies below it (shorter lines), else as given."""
    if not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


def show_mark(mark: Mark) -> str:
    return str(Mark(show_path(mark.file), mark.line, mark.column))


def layer_ranges(layers: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2, 5'."""
    parts: list[str] = []
    start = prev = layers[0]
    for n in [*layers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def group_layers(findings: list[Finding], n_layers: int) -> list[Finding]:
    """Merge findings that differ only in a `blk.N.` index into one, naming the layers."""
    order: list[tuple[Severity, str, str, str]] = []
    layers: dict[tuple[Severity, str, str, str], list[int]] = {}
    for f in findings:
        numbers = [int(m.group(1)) for m in _LAYER.finditer(f.subject)]
        subject = _LAYER.sub("blk.{i}.", f.subject)
        message = _LAYER.sub("blk.{i}.", f.message)
        key: tuple[Severity, str, str, str] = (f.severity, f.where, subject, message)
        if key not in layers:
            order.append(key)
            layers[key] = []
        layers[key] += numbers[:1]
    out: list[Finding] = []
    for key in order:
        severity, where, subject, message = key
        found = tuple(sorted(set(layers[key])))
        if len(found) == 1:  # a single layer: keep its real name
            subject = subject.replace("blk.{i}.", f"blk.{found[0]}.")
            message = message.replace("blk.{i}.", f"blk.{found[0]}.")
        elif found:
            scope = f"all {n_layers} layers" if len(found) == n_layers else f"layers {layer_ranges(found)}"
            subject = f"{subject} ({scope})"
        out.append(replace(Finding(severity, where, subject, message), layers=found))
    return out
