"""What a forward pass carries besides the activations: the step (positions and their rope angles) and
the cache, one state per layer, owned by that layer's mixer."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tfb.nn.rotary import Rotary


class Step:
    """The positions of one forward call ([batch, seq]), its first position, and rope angles computed
    once per rotary for every layer that shares it."""

    def __init__(self, positions: torch.Tensor, start: int) -> None:
        self.positions, self.start = positions, start
        self._angles: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
        if id(rotary) not in self._angles:
            self._angles[id(rotary)] = rotary.angles(self.positions)
        return self._angles[id(rotary)]


class LayerState(Protocol):
    def truncate(self, length: int) -> None: ...


class Cache:
    """The state of every layer after the positions seen so far (`length`, committed after each full
    forward call); `layers[i]` is whatever layer i's mixer keeps (None: nothing)."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers
        self.length = 0

    def commit(self, new: int) -> None:
        self.length += new

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (for a rewound or shared prompt)."""
        self.length = min(self.length, length)
        for state in self.layers:
            if state is not None:
                state.truncate(self.length)


class SequenceState:
    """Per-position tensors of one layer ([batch, heads, positions, dim] each: keys and values, or a
    latent and its rope part), stored in `dtype` (default: as they come); capacity grows geometrically."""

    def __init__(self, count: int, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self.buffers: list[torch.Tensor | None] = [None] * count

    def update(self, start: int, *new: torch.Tensor) -> list[torch.Tensor]:
        """Store `new` at positions start... (after the committed ones); return every position's values."""
        out = []
        for i, x in enumerate(new):
            end = start + x.shape[2]
            buf = self.buffers[i]
            if buf is None or buf.shape[2] < end:
                grown = x.new_empty(*x.shape[:2], max(end, 2 * (0 if buf is None else buf.shape[2]), 16),
                                    x.shape[3], dtype=self.dtype or x.dtype)
                if buf is not None:
                    grown[:, :, :start] = buf[:, :, :start]
                self.buffers[i] = buf = grown
            buf[:, :, start:end] = x
            out.append(buf[:, :, :end])
        return out

    def truncate(self, length: int) -> None:
        """Positions past `length` are overwritten by the next update; nothing to do."""
