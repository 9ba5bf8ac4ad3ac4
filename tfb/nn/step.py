"""A decoding step of one sequence run by one native call (tfb/quant/native/step.c).

A step of a thin, deep model makes a few hundred small products, and between them as many torch and
module calls again: from Python those calls cost as much as the products. So the first decoding step plans
the whole step once: every block, its norms, mixer and feed-forward, and the output layer, each asked for
its part through `plan_step(plan, x)`, a method a module offers where it can say what it computes as the
operations below. The plan is a list of operations over fixed float32 buffers; a step then costs one call.

A model with any module that has no `plan_step`, or that says it cannot (`Unplannable`: a float weight, a
norm kind, an option the operations do not cover), keeps the module path, as does every call that is not a
single new token of one sequence. The operations call the kernels the modules call, so a step computes what
the module path computes (up to the activation functions' own rounding of exp and tanh).
"""

from __future__ import annotations

import ctypes
import threading
import weakref
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
MATMUL, RMS_NORM, ADD, GLU, ROPE, STORE, ATTEND, LOGITS = range(8)
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu_erf": 2, "relu": 3, "relu_squared": 4}


class Unplannable(Exception):
    """A module (or an option of one) the native step does not run; the model keeps the module path."""


class Op(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int64), ("i", ctypes.c_int64 * 8), ("f", ctypes.c_double * 2),
                ("p", ctypes.c_void_p * 4)]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class StepPlan:
    """The operations of one step and the buffers they work in, as the modules add them.

    `scratch(name, n)` is a float32 buffer that every layer reuses for the same role (layers run one after
    another, so a role's buffer is free again when the next layer starts), and stays in cache. Slots are the
    per-step table of step.c: for each rope its cos/sin tables, for each attention layer its cache."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.keep: list[Any] = []  # what the operations point into
        self._scratch: dict[tuple[str, int], torch.Tensor] = {}
        self.layer = 0  # the block being planned (its cache state is cache.layers[layer])
        self.rotaries: dict[int, tuple[Rotary, int]] = {}  # id -> (rotary, slot)
        self.kv_layers: dict[int, tuple[int, int, int, int]] = {}  # layer -> (slot, kv heads, key width, value width)
        self.slot_count = 1  # slot 0: where the logits go

    def scratch(self, name: str, n: int) -> torch.Tensor:
        key = (name, n)
        if key not in self._scratch:
            self._scratch[key] = torch.zeros(n, dtype=torch.float32)
        return self._scratch[key]

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
        """A packed weight's product arguments (type, stride, out, in, int8, logits slot), address and bias;
        Unplannable for float weights and types without native products."""
        if layer.packed is None:
            raise Unplannable("a linear layer with float weights")
        prepared = native.prepare(layer.packed, layer.int8_activations)
        if prepared is None:
            raise Unplannable(f"{layer.packed.ggml_type.name} weights without native products")
        type_id, weight, stride, n, k, int8 = prepared.step_args()
        bias = None if layer.bias is None else layer.bias.float().contiguous()
        self.keep += [prepared, bias]
        return (type_id, stride, n, k, int8, 0), weight, bias

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, y: torch.Tensor, rows: int) -> None:
        w = None if weight is None else weight.float().contiguous()
        self.keep.append(w)
        self._add(RMS_NORM, (rows, x.numel() // rows), (eps,), (_ptr(x), _ptr(w), _ptr(y)))

    def add(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        """x += y * scale (the residual stream taking a branch)."""
        self._add(ADD, (x.numel(),), (scale,), (_ptr(x), _ptr(y)))

    def glu(self, activation: str, gate: torch.Tensor, up: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = act(gate) * up, or act(gate) without `up`."""
        if activation not in ACTIVATIONS:
            raise Unplannable(f"activation {activation}")
        self._add(GLU, (gate.numel(), ACTIVATIONS[activation]), (), (_ptr(gate), _ptr(up), _ptr(out)))

    def rope(self, rotary: Rotary, x: torch.Tensor, heads: int, head_dim: int) -> None:
        """x ([heads, head_dim]) rotated in place at the step's position."""
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
        """The cache's entry at the step's position = x [heads, width]; slot: kv_slot(...), + 2 for values."""
        self._add(STORE, (heads, width, slot), (), (_ptr(x),))

    def attend(self, q: torch.Tensor, slot: int, out: torch.Tensor, *, kv_heads: int, rows: int, key_dim: int,
               value_dim: int, scale: float, softcap: float, sinks: torch.Tensor | None, window: int,
               chunk: int) -> None:
        """out = attention of q (kv_heads x rows query heads) over the cache's keys and values (slot)."""
        sinks = None if sinks is None else sinks.float().contiguous()
        self.keep.append(sinks)
        self._add(ATTEND, (kv_heads, rows, key_dim, value_dim, slot, window, chunk), (scale, softcap),
                  (_ptr(q), _ptr(sinks), _ptr(out)))

    def module(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """The buffer holding `module`'s output for input x, after the operations it adds."""
        plan_step = getattr(module, "plan_step", None)
        if plan_step is None:
            raise Unplannable(f"{type(module).__name__} has no native step")
        return plan_step(self, x)


class NativeStep:
    """A model's planned decoding step (`for_model`), bound to a cache before each call."""

    def __init__(self, plan: StepPlan, x: torch.Tensor, vocab: int) -> None:
        self.plan, self.x, self.vocab = plan, x, vocab
        self.ops = (Op * len(plan.ops))(*plan.ops)
        self.slots = (ctypes.c_int64 * plan.slot_count)()
        # the bound cache (weakly: a finished sequence's cache is not kept alive), its next position, and the
        # growth count when bound
        self.bound: tuple[weakref.ref[Cache], int, int] | None = None
        self.capacity = 0
        self.tables: list[torch.Tensor] = []
        self.lock = threading.Lock()

    @classmethod
    def for_model(cls, model: Transformer) -> NativeStep | None:
        """The step of `model`, or None where a module cannot be planned or there is no native library."""
        if not native.available() or model.dtype != torch.float32:
            return None
        plan = StepPlan()
        x = torch.zeros(model.config.hidden_size, dtype=torch.float32)  # the residual stream
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

    def __call__(self, x: torch.Tensor, cache: Cache) -> torch.Tensor | None:
        """Logits [vocab] of the token whose input embedding is x, after what `cache` holds (which then holds
        it too, uncommitted); None where this cache cannot be bound (another storage type)."""
        if not self.lock.acquire(blocking=False):  # another thread's step holds the buffers: use the modules
            return None
        try:
            position = cache.length
            stale = self.bound is None or self.bound[0]() is not cache or self.bound[1:] != (
                position, SequenceState.growths) or position >= self.capacity
            if stale and not self._bind(cache, position):
                return None
            self.x.copy_(x.reshape(-1))
            logits = torch.empty(self.vocab, dtype=torch.float32)
            self.slots[0] = logits.data_ptr()
            native.run_step(self.ops, len(self.ops), position, self.slots)
            self.bound = (weakref.ref(cache), position + 1, SequenceState.growths)
            return logits
        finally:
            self.lock.release()

    def _bind(self, cache: Cache, position: int) -> bool:
        """Point the slots at `cache`'s keys and values (grown to hold this position) and at rope tables at
        least as long."""
        stores = []
        for layer, (slot, heads, key_dim, value_dim) in self.plan.kv_layers.items():
            state = cache.layers[layer]
            if not isinstance(state, SequenceState) or state.dtype not in (None, torch.float32):
                return False
            keys, values = state.reserve(position + 1, (heads, key_dim), (heads, value_dim))
            if keys.dtype != torch.float32 or values.dtype != torch.float32 or keys.shape[0] != 1:
                return False
            stores.append((slot, keys, values))
        for slot, keys, values in stores:
            self.slots[slot:slot + 4] = [keys.data_ptr(), keys.stride(1), values.data_ptr(), values.stride(1)]
        room = min((keys.shape[2] for _, keys, _ in stores), default=position + 1)
        if self.plan.rotaries and (not self.tables or len(self.tables[0]) <= position):
            length = max(16, 2 * len(self.tables[0]) if self.tables else 0, room, position + 1)
            self.tables = []
            for rotary, slot in self.plan.rotaries.values():
                cos, sin = rotary.angles(torch.arange(length))
                self.tables += [cos.contiguous(), sin.contiguous()]
                self.slots[slot:slot + 2] = [self.tables[-2].data_ptr(), self.tables[-1].data_ptr()]
        self.capacity = min([room] + [len(t) for t in self.tables[:1]])
        self.bound = (weakref.ref(cache), position, SequenceState.growths)
        return True
