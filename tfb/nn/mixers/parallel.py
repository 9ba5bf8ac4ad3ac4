"""The `parallel` mixer kind: branch mixers of other kinds (built through the kind registry) on the same input,
their outputs, each times its scale, summed. The layer's state holds one state per branch. The math:
tfb/spec/kinds/parallel.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.cache import Step, fork_state
from tfb.nn.kinds import BuildContext, kind_of
from tfb.spec.kinds.parallel import Parallel as Section

KIND = "parallel"
TARGETS: dict[str, tuple[str, str]] = {}  # per section: section_targets


def section_targets(section: Section) -> dict[str, tuple[str, str]]:
    """Each branch's slots, at that branch's module (`branches.<i>`)."""
    out: dict[str, tuple[str, str]] = {}
    for i, branch in enumerate(section.branches):
        for slot, (path, method) in kind_of(branch).targets_of(branch).items():
            out[slot] = (f"branches.{i}.{path}" if path else f"branches.{i}", method)
    return out


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> ParallelMixer:
    branches = [kind_of(branch).build(branch, c, ctx) for branch in section.branches]
    names = section.scales or [None] * len(branches)
    return ParallelMixer(branches, [1.0 if name is None else float(getattr(c, name)) for name in names])


class ParallelState:
    """The states of a parallel layer's branches (None where a branch keeps nothing). It rewinds when every
    branch's state does; otherwise a snapshot copies it, and a rewindable branch state (keys and values) is
    shared rather than copied: its positions past the snapshot are overwritten by the next call."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.rewindable = all(part is None or part.rewindable for part in parts)

    def truncate(self, length: int) -> None:
        for part in self.parts:
            if part is not None:
                part.truncate(length)

    def copy(self) -> ParallelState:
        return ParallelState([None if part is None else part.copy() for part in self.parts])

    def fork(self, length: int) -> ParallelState:
        return ParallelState([fork_state(part, length) for part in self.parts])


class ParallelMixer(nn.Module):
    def __init__(self, branches: list[nn.Module], scales: list[float]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.scales = scales

    def new_state(self, dtype: torch.dtype | None) -> ParallelState:
        branches: list[Any] = list(self.branches)
        return ParallelState([branch.new_state(dtype) for branch in branches])

    def forward(self, x: torch.Tensor, step: Step, state: ParallelState | None) -> torch.Tensor:
        out: torch.Tensor | None = None
        for i, (branch, scale) in enumerate(zip(self.branches, self.scales, strict=True)):
            y = branch(x, step, None if state is None else state.parts[i])
            y = y if scale == 1.0 else y * scale
            out = y if out is None else out + y
        assert out is not None  # the schema asks for two or more branches
        return out
