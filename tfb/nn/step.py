"""A decoding step run by one native call (tfb/quant/native/step.c).

A step of a thin, deep model makes a few hundred small products, and between them as many torch and
module calls again: from Python those calls cost as much as the products. So the first decoding step plans
the whole step once: every block, its norms, mixer and feed-forward, and the output layer, each asked for
its part through `plan_step(plan, x)`, a method a module offers where it can say what it computes as the
operations below. The plan is a list of operations over fixed float32 buffers; a step then costs one call.

A step computes one new token for each of `rows` sequences (continuous batching's steps: each row its own
cache and position; a plan per row count). A model with any module that has no `plan_step`, or that says it
cannot (`Unplannable`: a float weight, a norm kind, an option the operations do not cover), keeps the module
path, as do prompts. The operations call the kernels the modules call, so a step computes what
the module path computes (up to the activation functions' own rounding of exp and tanh).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tfb.nn.cache import Cache, SequenceState
from tfb.quant import native

if TYPE_CHECKING:
    from tfb.nn.block import Block
    from tfb.nn.linear import Linear
    from tfb.nn.model import Transformer
    from tfb.nn.rotary import Rotary

# operation codes and activation codes of step.c
MATMUL, RMS_NORM, ADD, GLU, ROPE, STORE, ATTEND, LOGITS, MUL, GATHER, CONV, L2_NORM, DELTA = range(13)
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu_erf": 2, "relu": 3, "relu_squared": 4, "sigmoid": 5}


@dataclass(frozen=True)
class RecurrentSlot:
    """Where a step reads a recurrent state tensor: slot `slot` (of each row) holds the address of
    `cache.layers[layer].<attribute>` ([1, *shape] float32) of the row's cache."""

    slot: int
    layer: int
    attribute: str
    shape: tuple[int, ...]
    zero_at_start: bool


class Unplannable(Exception):
    """A module (or an option of one) the native step does not run; the model keeps the module path."""


class Op(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int64), ("i", ctypes.c_int64 * 8), ("f", ctypes.c_double * 2),
                ("p", ctypes.c_void_p * 8)]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class StepPlan:
    """The operations of one step and the buffers they work in, as the modules add them.

    `scratch(name, n)` is a float32 buffer [rows, n] that every layer reuses for the same role (layers run one
    after another, so a role's buffer is free again when the next layer starts), and stays in cache. The
    operations take their sizes per token from their buffers' last dimension. Slots are the per-step table
    of step.c, one per row: for each rope its cos/sin tables, for each attention layer its cache, for each
    recurrent state tensor its address."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.ops: list[Op] = []
        self.keep: list[Any] = []  # what the operations point into
        self._scratch: dict[tuple[str, int], torch.Tensor] = {}
        self.layer = 0  # the block being planned (its cache state is cache.layers[layer])
        self.rotaries: dict[int, tuple[Rotary, int]] = {}  # id -> (rotary, slot)
        self.kv_layers: dict[int, tuple[int, int, int, int]] = {}  # layer -> (slot, kv heads, key width, value width)
        self.slot_count = 1  # slot 0: where the logits go
        self.states: list[RecurrentSlot] = []  # recurrent state tensors, bound at every step

    def scratch(self, name: str, n: int) -> torch.Tensor:
        key = (name, n)
        if key not in self._scratch:
            self._scratch[key] = torch.zeros(self.rows, n, dtype=torch.float32)
        return self._scratch[key]

    def split(self, x: torch.Tensor, sizes: list[int], name: str) -> list[torch.Tensor]:
        """x's columns in consecutive parts of `sizes`: views for one row; for more, copies into buffers of
        their own (the operations take dense rows)."""
        if self.rows == 1:
            return list(x.split(sizes, dim=-1))
        parts, first = [], 0
        for i, size in enumerate(sizes):
            part = self.scratch(f"{name}.{i}", size)
            self.gather(x, part, 1, size, size, first)
            parts.append(part)
            first += size
        return parts

    def _add(self, code: int, ints: tuple[int, ...] = (), floats: tuple[float, ...] = (),
             pointers: tuple[int | None, ...] = ()) -> None:
        op = Op(code)
        op.i[:len(ints)], op.f[:len(floats)] = ints, floats
        op.p[:len(pointers)] = pointers
        self.ops.append(op)

    def _slots(self, count: int) -> int:
        first, self.slot_count = self.slot_count, self.slot_count + count
        return first

    # ------------------------------------------------------------------------------ operations

    def linear(self, layer: Linear, x: torch.Tensor, y: torch.Tensor) -> None:
        """y = layer(x)."""
        ints, weight, bias = self._product(layer)
        self._add(MATMUL, ints, (), (weight, _ptr(x), _ptr(y), _ptr(bias)))

    def logits(self, layer: Linear, x: torch.Tensor) -> None:
        """The step's logits (a new tensor each step: slot 0) = layer(x)."""
        ints, weight, bias = self._product(layer)
        self._add(LOGITS, ints, (), (weight, _ptr(x), None, _ptr(bias)))

    def _product(self, layer: Linear) -> tuple[tuple[int, ...], int, torch.Tensor | None]:
        """A packed weight's product arguments (type, stride, out, in, int8), address and bias;
        Unplannable for float weights and types without native products."""
        if layer.packed is None:
            raise Unplannable("a linear layer with float weights")
        prepared = native.prepare(layer.packed, layer.int8_activations)
        if prepared is None:
            raise Unplannable(f"{layer.packed.ggml_type.name} weights without native products")
        type_id, weight, stride, n, k, int8 = prepared.step_args()
        bias = None if layer.bias is None else layer.bias.float().contiguous()
        self.keep += [prepared, bias]
        return (type_id, stride, n, k, int8), weight, bias

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, y: torch.Tensor, count: int) -> None:
        """y = rms_norm(x) * weight over each of the `count` vectors of a row."""
        w = None if weight is None else weight.float().contiguous()
        self.keep.append(w)
        self._add(RMS_NORM, (count, x.shape[-1] // count), (eps,), (_ptr(x), _ptr(w), _ptr(y)))

    def add(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        """x += y * scale (the residual stream taking a branch)."""
        self._add(ADD, (x.shape[-1],), (scale,), (_ptr(x), _ptr(y)))

    def glu(self, activation: str, gate: torch.Tensor, up: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = act(gate) * up, or act(gate) without `up`."""
        if activation not in ACTIVATIONS:
            raise Unplannable(f"activation {activation}")
        self._add(GLU, (gate.shape[-1], ACTIVATIONS[activation]), (), (_ptr(gate), _ptr(up), _ptr(out)))

    def rope(self, rotary: Rotary, x: torch.Tensor, heads: int, head_dim: int) -> None:
        """x ([heads, head_dim] a row) rotated in place at each row's position."""
        if id(rotary) not in self.rotaries:
            self.rotaries[id(rotary)] = (rotary, self._slots(2))
        slot = self.rotaries[id(rotary)][1]
        adjacent = int(rotary.params.pairing == "adjacent")
        self._add(ROPE, (heads, head_dim, rotary.params.dims, adjacent, slot), (), (_ptr(x),))

    def kv_slot(self, kv_heads: int, key_dim: int, value_dim: int) -> int:
        """The slots of this layer's keys and values in the cache (cache.layers[layer], a SequenceState)."""
        if self.layer not in self.kv_layers:
            self.kv_layers[self.layer] = (self._slots(4), kv_heads, key_dim, value_dim)
        return self.kv_layers[self.layer][0]

    def store(self, slot: int, x: torch.Tensor, heads: int, width: int) -> None:
        """Each row's cache entry at its position = its x [heads, width]; slot: kv_slot(...), + 2 for values."""
        self._add(STORE, (heads, width, slot), (), (_ptr(x),))

    def attend(self, q: torch.Tensor, slot: int, out: torch.Tensor, *, kv_heads: int, group: int, key_dim: int,
               value_dim: int, scale: float, softcap: float, sinks: torch.Tensor | None, window: int,
               chunk: int) -> None:
        """out = attention of q (kv_heads x group query heads a row) over each row's cached keys and values."""
        sinks = None if sinks is None else sinks.float().contiguous()
        self.keep.append(sinks)
        self._add(ATTEND, (kv_heads, group, key_dim, value_dim, slot, window, chunk), (scale, softcap),
                  (_ptr(q), _ptr(sinks), _ptr(out)))

    def mul(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        """out = a * b, element by element."""
        self._add(MUL, (out.shape[-1],), (), (_ptr(a), _ptr(b), _ptr(out)))

    def gather(self, x: torch.Tensor, y: torch.Tensor, count: int, n: int, stride: int, first: int) -> None:
        """y = per row `count` pieces of n columns of x, `stride` apart from column `first` (one part of
        interleaved heads)."""
        self._add(GATHER, (count, n, stride, x.stride(0), first), (), (_ptr(x), _ptr(y)))

    def state(self, attribute: str, shape: tuple[int, ...], *, zero_at_start: bool = False) -> int:
        """The slot of this layer's recurrent state tensor `cache.layers[layer].<attribute>` (float32, [1,
        *shape]), updated in place by the operations. Such tensors are replaced between steps (the module path
        and Cache.restore put new ones in; a fork has copies), so each step binds whatever the state holds
        then: None becomes zeros (as the module path reads it), and so does any tensor at position 0 with
        zero_at_start (a state the module path ignores at a sequence's start)."""
        slot = self._slots(1)
        self.states.append(RecurrentSlot(slot, self.layer, attribute, shape, zero_at_start))
        return slot

    def conv(self, x: torch.Tensor, weight: torch.Tensor, state_slot: int, y: torch.Tensor,
             activation: str | None = None) -> None:
        """y = act(causal depthwise convolution of the state's last inputs and x), the state taking x.
        weight [channels, kernel]; the state [channels, kernel - 1] at `state_slot` (a `state`)."""
        channels = x.shape[-1]
        w = weight.float().reshape(channels, -1).contiguous()
        self.keep.append(w)
        act = -1 if activation is None else ACTIVATIONS[activation]
        self._add(CONV, (channels, w.shape[1], act, state_slot), (), (_ptr(x), _ptr(w), _ptr(y)))

    def l2_norm(self, x: torch.Tensor, count: int, eps: float, scale: float, y: torch.Tensor) -> None:
        """y = x / sqrt(sum(x^2) + eps) * scale over each of the `count` vectors of a row."""
        self._add(L2_NORM, (count, x.shape[-1] // count), (eps, scale), (_ptr(x), _ptr(y)))

    def delta_rule(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                   dt_bias: torch.Tensor, a_neg: torch.Tensor, state_slot: int, out: torch.Tensor, *,
                   key_heads: int, key_dim: int, tiled: bool) -> None:
        """out = one step of the gated delta rule per value head (step.c's STEP_DELTA), the state [heads,
        key_dim, value_dim] at `state_slot` updated."""
        heads = b.shape[-1]
        params = [t.float().contiguous() for t in (dt_bias, a_neg)]
        self.keep += params
        self._add(DELTA, (heads, key_heads, key_dim, v.shape[-1] // heads, int(tiled), state_slot), (),
                  (_ptr(q), _ptr(k), _ptr(v), _ptr(b), _ptr(alpha), _ptr(params[0]), _ptr(params[1]), _ptr(out)))

    def module(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """The buffer holding `module`'s output for input x, after the operations it adds."""
        plan_step = getattr(module, "plan_step", None)
        if plan_step is None:
            raise Unplannable(f"{type(module).__name__} has no native step")
        return plan_step(self, x)


class NativeStep:
    """A model's planned decoding step for `rows` sequences (`for_model`), bound to their caches before each call."""

    def __init__(self, plan: StepPlan, x: torch.Tensor, vocab: int) -> None:
        self.plan, self.x, self.vocab, self.rows = plan, x, vocab, plan.rows
        self.ops = (Op * len(plan.ops))(*plan.ops)
        self.slots = (ctypes.c_int64 * (plan.rows * plan.slot_count))()
        self.positions = (ctypes.c_int64 * plan.rows)()
        # the bound caches (weakly: a finished sequence's cache is not kept alive), their next positions, and the
        # growth count when bound
        self.bound: tuple[list[weakref.ref[Cache]], list[int], int] | None = None
        self.capacity = 0  # positions every bound cache and rope table holds
        self.tables: list[torch.Tensor] = []
        self.states: list[torch.Tensor | None] = [None] * (len(plan.states) * plan.rows)  # bound last, by row
        self.lock = threading.Lock()

    @classmethod
    def for_model(cls, model: Transformer, rows: int = 1) -> NativeStep | None:
        """The step of `model`, or None where a module cannot be planned or there is no native library."""
        if not native.available() or model.dtype != torch.float32:
            return None
        plan = StepPlan(rows)
        x = torch.zeros(rows, model.config.hidden_size, dtype=torch.float32)  # the residual stream
        try:
            blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]
            for i, block in enumerate(blocks):
                plan.layer = i
                block.plan_step(plan, x)
            h = x if model.output_norm is None else model.output_norm.plan_step(plan, x, "out_norm")
            plan.logits(model.output, h)
        except Unplannable:
            return None
        return cls(plan, x, model.config.vocab_size)

    def __call__(self, x: torch.Tensor, caches: list[Cache]) -> torch.Tensor | None:
        """Logits [rows, vocab] of one token for each cache (input embeddings x [rows, hidden]), after what
        the caches hold (which then hold it too, uncommitted); None where a cache cannot be bound (another
        storage type)."""
        if not self.lock.acquire(blocking=False):  # another thread's step holds the buffers: use the modules
            return None
        try:
            positions = [cache.length for cache in caches]
            if self._stale(caches, positions) and not self._bind(caches, positions):
                return None
            if self.plan.states and not self._bind_states(caches, positions):
                return None
            self.x.copy_(x.reshape(self.x.shape))
            logits = torch.empty(self.rows, self.vocab, dtype=torch.float32)
            self.slots[0] = logits.data_ptr()
            self.positions[:] = positions  # type: ignore[assignment]
            native.run_step(self.ops, len(self.ops), self.rows, self.positions, self.slots, self.plan.slot_count)
            self.bound = (self.bound[0] if self.bound else [], [p + 1 for p in positions], SequenceState.growths)
            return logits
        finally:
            self.lock.release()

    def _bind_states(self, caches: list[Cache], positions: list[int]) -> bool:
        """Point each row's slots at the recurrent state tensors that its cache holds now. A tensor bound before
        (the same object) is taken as it is; another is checked (one sequence, float32, contiguous) or made so;
        None, or any tensor at position 0 where the state starts from zeros, becomes zeros."""
        count = len(self.plan.states)
        for row, (cache, position) in enumerate(zip(caches, positions, strict=True)):
            for n, entry in enumerate(self.plan.states):
                if not self._bind_state(row * count + n, row * self.plan.slot_count + entry.slot, entry,
                                        cache.layers[entry.layer], position):
                    return False
        return True

    def _bind_state(self, index: int, slot: int, entry: RecurrentSlot, state: Any, position: int) -> bool:
        """Bind one state tensor (self.states[index], at slots[slot]); False where the state cannot be."""
        if state is None:
            return False
        tensor = getattr(state, entry.attribute, None)
        if tensor is self.states[index] and tensor is not None and (position or not entry.zero_at_start):
            return True
        if tensor is None or (position == 0 and entry.zero_at_start):
            tensor = torch.zeros(1, *entry.shape, dtype=torch.float32)
        elif tuple(tensor.shape) != (1, *entry.shape):
            return False  # several sequences in one cache: the module path
        elif tensor.dtype != torch.float32 or not tensor.is_contiguous():
            tensor = tensor.float().contiguous()
        setattr(state, entry.attribute, tensor)
        self.states[index] = tensor
        self.slots[slot] = tensor.data_ptr()
        return True

    def _stale(self, caches: list[Cache], positions: list[int]) -> bool:
        if self.bound is None or max(positions) >= self.capacity:
            return True
        refs, expected, growths = self.bound
        return growths != SequenceState.growths or expected != positions or any(
            ref() is not cache for ref, cache in zip(refs, caches, strict=True))

    def _bind(self, caches: list[Cache], positions: list[int]) -> bool:
        """Point each row's slots at its cache's keys and values (grown to hold its position) and at rope tables
        at least as long."""
        stores = []
        for row, (cache, position) in enumerate(zip(caches, positions, strict=True)):
            for layer, (slot, heads, key_dim, value_dim) in self.plan.kv_layers.items():
                state = cache.layers[layer]
                if not isinstance(state, SequenceState) or state.dtype not in (None, torch.float32):
                    return False
                keys, values = state.reserve(position + 1, (heads, key_dim), (heads, value_dim))
                if keys.dtype != torch.float32 or values.dtype != torch.float32 or keys.shape[0] != 1:
                    return False
                stores.append((row * self.plan.slot_count + slot, keys, values))
        for slot, keys, values in stores:
            self.slots[slot:slot + 4] = [keys.data_ptr(), keys.stride(1), values.data_ptr(), values.stride(1)]
        room = min((keys.shape[2] for _, keys, _ in stores), default=max(positions) + 1)
        if self.plan.rotaries and (not self.tables or len(self.tables[0]) <= max(positions)):
            length = max(16, 2 * len(self.tables[0]) if self.tables else 0, room, max(positions) + 1)
            self.tables = []
            for rotary, _ in self.plan.rotaries.values():
                cos, sin = rotary.angles(torch.arange(length))
                self.tables += [cos.contiguous(), sin.contiguous()]
        for i, (_, slot) in enumerate(self.plan.rotaries.values()):
            for row in range(self.rows):
                first = row * self.plan.slot_count + slot
                self.slots[first:first + 2] = [self.tables[2 * i].data_ptr(), self.tables[2 * i + 1].data_ptr()]
        self.capacity = min([room] + [len(t) for t in self.tables[:1]])
        self.bound = ([weakref.ref(cache) for cache in caches], positions, SequenceState.growths)
        return True
