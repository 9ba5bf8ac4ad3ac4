"""What a forward pass carries besides the activations: the step (positions and their rope angles) and
the cache, one state per layer, owned by that layer's mixer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tfb.nn.rotary import Rotary


class Step:
    """The positions of one forward call ([batch, seq]), its first position, and rope angles computed
    once per rotary for every layer that shares it. In a step over rows that are separate sequences
    (RowCaches), `starts` holds each row's first position and `start` is not used. `layer_inputs`: the
    per-layer input embeddings of the call's tokens ([batch, seq, layers, width]; tfb.nn.per_layer), if the
    model has them; `kv`: the keys and values (every position) of the layers whose K/V later layers read, by
    layer index."""

    def __init__(self, positions: torch.Tensor, start: int, starts: list[int] | None = None,
                 layer_inputs: torch.Tensor | None = None) -> None:
        self.positions, self.start, self.starts, self.layer_inputs = positions, start, starts, layer_inputs
        self._rows: dict[int, Step] = {}
        self._angles: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def row(self, i: int) -> Step:
        """The step of row i alone (its own first position); the same object for every layer of the call,
        so that what one layer leaves in it (`kv`) reaches the later layers of that row."""
        if i not in self._rows:
            inputs = self.layer_inputs[i:i + 1] if self.layer_inputs is not None else None
            start = self.starts[i] if self.starts is not None else self.start
            self._rows[i] = Step(self.positions[i:i + 1], start, layer_inputs=inputs)
        return self._rows[i]

    def angles(self, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
        if id(rotary) not in self._angles:
            self._angles[id(rotary)] = rotary.angles(self.positions)
        return self._angles[id(rotary)]


class LayerState(Protocol):
    """A layer's cache state. A rewindable one keeps every position (keys and values) and can forget the
    last ones; another (a recurrent state: a fixed-size summary of all positions) cannot, and is copied
    into snapshots instead."""

    rewindable: bool

    def truncate(self, length: int) -> None: ...

    def copy(self) -> LayerState: ...


def fork_state(state: Any, length: int) -> Any:
    """An independent copy of a layer's state after `length` positions, for a second sequence that goes on
    from the same prefix: a state with its own `fork` makes it; another that cannot rewind (a recurrent
    state) is its `copy()`."""
    if state is None:
        return None
    fork = getattr(state, "fork", None)
    if fork is not None:
        return fork(length)
    if not state.rewindable:
        return state.copy()
    raise TypeError(f"{type(state).__name__} cannot be forked")


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, (type, torch.dtype)):
        return sum(_nbytes(v) for v in vars(value).values())
    return 0


@dataclass(frozen=True)
class Snapshot:
    """A cache as it was after `length` positions: copies of the states that cannot rewind."""

    length: int
    saved: tuple[Any, ...]  # per layer: a copied state, or None (nothing, or a state that rewinds)


class Cache:
    """The state of every layer after the positions seen so far (`length`, committed after each full
    forward call); `layers[i]` is whatever layer i's mixer keeps (None: nothing)."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers
        self.length = 0
        self.initial = self.snapshot()  # the empty cache, to start over from

    @property
    def rewindable(self) -> bool:
        return all(state is None or state.rewindable for state in self.layers)

    def step(self, batch: int, seq: int, device: torch.device) -> Step:
        """The step of a forward call of `seq` new positions for each of `batch` rows."""
        return Step((self.length + torch.arange(seq, device=device)).expand(batch, seq), self.length)

    def commit(self, new: int) -> None:
        self.length += new

    def truncate(self, length: int) -> bool:
        """Forget positions from `length` on (for a rewound or shared prompt); False, and nothing changed,
        when a layer's state cannot go back (restore a snapshot instead)."""
        if length >= self.length:
            return True
        if not self.rewindable:
            return False
        self.length = length
        for state in self.layers:
            if state is not None:
                state.truncate(length)
        return True

    def fork(self, length: int | None = None) -> Cache:
        """An independent cache holding the same positions, or the first `length` of them where every state
        can rewind (a second sequence continuing this prefix, or a part of it)."""
        length = self.length if length is None else length
        if length > self.length or (length < self.length and not self.rewindable):
            raise ValueError(f"a cache of {self.length} positions cannot be forked at {length}")
        other = Cache.__new__(Cache)
        other.layers = [fork_state(state, length) for state in self.layers]
        other.length, other.initial = length, self.initial
        return other

    def nbytes(self) -> int:
        """The memory its layers' states hold (tensors reached through their attributes, lists and tuples)."""
        return sum(_nbytes(state) for state in self.layers)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.length, tuple(None if s is None or s.rewindable else s.copy() for s in self.layers))

    def restore(self, snapshot: Snapshot) -> None:
        """The cache as it was at `snapshot` (rewindable states forget what came after it)."""
        self.length = snapshot.length
        for i, saved in enumerate(snapshot.saved):
            if saved is not None:
                self.layers[i] = saved.copy()
            elif self.layers[i] is not None:
                self.layers[i].truncate(snapshot.length)


class SequenceState:
    """Per-position tensors of one layer ([batch, heads, positions, dim] each: keys and values, or a
    latent and its rope part), stored in `dtype` (default: as they come); capacity grows geometrically."""

    rewindable = True
    growths = 0  # buffers replaced by larger ones, in any state (a native step re-reads its pointers: tfb.nn.step)

    def __init__(self, count: int, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self.buffers: list[torch.Tensor | None] = [None] * count

    def update(self, start: int, *new: torch.Tensor) -> list[torch.Tensor]:
        """Store `new` at positions start... (after the committed ones); return every position's values."""
        out = []
        for i, x in enumerate(new):
            end = start + x.shape[2]
            buf = self._room(i, start, end, (x.shape[0], x.shape[1], x.shape[3]), x.dtype)
            buf[:, :, start:end] = x
            out.append(buf[:, :, :end])
        return out

    def reserve(self, end: int, *shapes: tuple[int, int]) -> list[torch.Tensor]:
        """The whole buffers, with room for `end` positions (those before it kept); each absent one made for
        `shapes[i]` (heads, width) of float32: for a writer that stores positions itself (tfb.nn.step)."""
        return [self._room(i, end - 1, end, (1, heads, width), torch.float32)
                for i, (heads, width) in enumerate(shapes)]

    def _room(self, i: int, start: int, end: int, shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
        """Buffer i ([batch, heads, positions, width] of `shape`), grown (geometrically) where it cannot hold
        `end` positions; the first `start` kept."""
        buf = self.buffers[i]
        if buf is None or buf.shape[2] < end:
            batch, heads, width = shape
            room = max(end, 2 * (0 if buf is None else buf.shape[2]), 16)
            grown = torch.empty(batch, heads, room, width, dtype=self.dtype or dtype)
            if buf is not None:
                grown[:, :, :start] = buf[:, :, :start]
            self.buffers[i] = buf = grown
            SequenceState.growths += 1
        return buf

    def truncate(self, length: int) -> None:
        """Positions past `length` are overwritten by the next update; nothing to do."""

    def fork(self, length: int) -> SequenceState:
        """A copy of the first `length` positions, with room for as many more."""
        other = SequenceState(len(self.buffers), self.dtype)
        for i, buf in enumerate(self.buffers):
            if buf is not None:
                grown = buf.new_empty(*buf.shape[:2], max(2 * length, 16), buf.shape[3])
                grown[:, :, :length] = buf[:, :, :length]
                other.buffers[i] = grown
        return other

    def copy(self) -> SequenceState:
        return self  # never copied: a rewindable state is truncated instead


class RowStates:
    """One layer's states of a batch whose rows are separate sequences, each with its own cache (continuous
    batching: the rows share the weight products, not their positions). A mixer that takes a RowStates
    runs its per-sequence part row by row (`state.rows[i]`, at `step.starts[i]`); the block runs any other
    mixer once per row."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows


class RowCaches:
    """A batch of caches, one per row of a forward call of one new position per sequence (a decoding step
    of several sequences at once); duck-types Cache for Transformer.forward."""

    def __init__(self, caches: list[Cache]) -> None:
        self.caches = caches
        count = len(caches[0].layers) if caches else 0
        self.layers = [None if all(c.layers[i] is None for c in caches) else RowStates([c.layers[i] for c in caches])
                       for i in range(count)]

    def step(self, batch: int, seq: int, device: torch.device) -> Step:
        if batch != len(self.caches):
            raise ValueError(f"{batch} rows for {len(self.caches)} caches")
        starts = [c.length for c in self.caches]
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(seq, device=device)
        return Step(positions, 0, starts)

    def commit(self, new: int) -> None:
        for cache in self.caches:
            cache.commit(new)
