"""torch-facing wrappers of the native kernels: matmul with packed weights, dequantize, threads.

Every function returns None where the native path cannot serve the call (library unavailable, storage
type without native kernels), and the caller then takes the torch path.

Activation rows: one row takes the fused matrix-vector product, which expands blocks in registers; more
rows take a C kernel that dequantizes weight rows into a per-thread scratch (4 at a time for up to 16
activation rows, where the floats stay in L1; 16 for more) and multiplies them with register-blocked float32
dot products. That beat two fused products for two rows and torch's GEMM on weights expanded by
`dequantize_into` at every row count measured, 2 to 2048 (tools/bench_matmul.py, docs/benchmarks.md);
beyond NATIVE_MAX_ROWS rows tfb.nn.linear hands the product to torch all the same. The formats with a
native dequantizer but no fused product (the codebook and ternary ones, NVFP4, Q1_0, Q2_0) take the
dequantize-and-tile kernel for one row too.

With 8-bit activations (`int8_activations`), up to `int8_rows(type)` activation rows take integer products
that decode each weight block once for up to 8 rows (with AVX512_VNNI: vpdpbusd); how many rows that beats
the float32 products for was measured per type and instruction set (all of a prompt for the k-quants with
VNNI, up to 8 rows for the 32-weight formats). Each row's result is the same whatever rows come with it.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import TYPE_CHECKING

import torch

from tfb.gguf.ggml_types import GGMLType
from tfb.quant.native import workers
from tfb.quant.native.library import load

if TYPE_CHECKING:  # packed.py imports this module
    from tfb.quant.packed import PackedTensor

NATIVE_MAX_ROWS = 2048

_supported: dict[int, bool] = {}
_library: list[ctypes.CDLL | None] = []  # once loaded and set up


def library() -> ctypes.CDLL | None:
    """The loaded library, its threads chosen on first use (tfb.quant.native.workers)."""
    if not _library:
        lib = load()
        if lib is not None:
            workers.configure(lib)
        _library.append(lib)
    return _library[0]


def available() -> bool:
    return library() is not None


def supports(ggml_type: GGMLType) -> bool:
    """Whether `ggml_type` has native kernels (and the library is available)."""
    known = _supported.get(ggml_type.id)
    if known is None:
        lib = library()
        known = _supported[ggml_type.id] = lib is not None and bool(lib.tfb_supports(ggml_type.id))
    return known


def set_threads(threads: int) -> int:
    """Threads the native kernels use (the caller's included); returns the count in effect."""
    lib = library()
    return 1 if lib is None else int(lib.tfb_set_threads(threads))


def threads() -> int:
    lib = library()
    return 1 if lib is None else int(lib.tfb_threads())


def use_openmp(enabled: bool = True) -> bool:
    """Borrow torch's OpenMP threads (the default where found) or use the library's own pool."""
    lib = library()
    return lib is not None and workers.use_openmp(lib, enabled)


def uses_openmp() -> bool:
    lib = library()
    return lib is not None and bool(lib.tfb_uses_openmp())


def set_isa(name: str = "") -> bool:
    """Use the kernels of one instruction set ("avx512vnni", "avx512", "avx2", "portable"; "" for the best);
    for tests and comparisons. The first choice is $TFB_ISA where it names a set the CPU runs, else the best."""
    lib = library()
    return lib is not None and lib.tfb_set_isa(name.encode()) == 0


def isa() -> str | None:
    lib = library()
    return None if lib is None else lib.tfb_isa().decode()


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"native {what} failed with status {status}")


def _rows(weight: PackedTensor) -> torch.Tensor:
    """The weight's raw bytes as [rows, row_bytes] with contiguous rows (a view where possible)."""
    raw = weight.raw.reshape(-1, weight.raw.shape[-1])
    return raw if raw.stride(-1) == 1 else raw.contiguous()


class Prepared:
    """A packed weight ready for native products, its call arguments worked out once (a decode step
    makes hundreds of small products, so per-call Python work shows). int8_activations: round each
    activation row to 8 bits, as llama.cpp does, where the type has such products (`supports_int8`) and for
    up to `int8_rows` rows."""

    __slots__ = ("_call", "_raw", "int8_activations", "name", "out_features")

    def __init__(self, lib: ctypes.CDLL, weight: PackedTensor, int8_activations: bool = False) -> None:
        self._raw = _rows(weight)  # holds the bytes the pointer below points into
        self.out_features, in_features = weight.shape
        self.name = f"{weight.name or 'a weight'} ({weight.ggml_type.name})"
        self.int8_activations = int8_activations and bool(lib.tfb_supports_int8(weight.ggml_type.id))
        entry = lib.tfb_matmul_int8 if self.int8_activations else lib.tfb_matmul
        self._call = functools.partial(entry, weight.ggml_type.id, self._raw.data_ptr(), self._raw.stride(0),
                                       self.out_features, in_features)

    def step_args(self) -> tuple[int, ...]:
        """The product's arguments for a planned decoding step (tfb.nn.step): type id, weight address, row
        stride, out and in features, and whether activations are rounded to 8 bits."""
        type_id, pointer, stride, n, k = self._call.args
        return type_id, pointer, stride, n, k, int(self.int8_activations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T for a contiguous float32 x [M, in]."""
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        _check(self._call(x.data_ptr(), x.shape[0], y.data_ptr()), f"matmul of {self.name}")
        return y


def prepare(weight: PackedTensor, int8_activations: bool = False) -> Prepared | None:
    """`weight` ready for repeated native products; None where its type has no native kernels."""
    lib = library()
    return Prepared(lib, weight, int8_activations) if lib is not None and supports(weight.ggml_type) else None


class PreparedExperts:
    """A packed expert weight [experts, out, in] ready for products with chosen experts (one call for all
    of a decoding step's experts, tfb_matmul_experts). int8_activations as in Prepared."""

    __slots__ = ("_call", "_raw", "name", "out_features")

    def __init__(self, lib: ctypes.CDLL, weight: PackedTensor, int8_activations: bool = False) -> None:
        self._raw = weight.raw if weight.raw.stride(-1) == 1 else weight.raw.contiguous()
        experts, self.out_features, in_features = weight.shape
        self.name = f"{weight.name or 'an expert weight'} ({weight.ggml_type.name})"
        int8 = int8_activations and bool(lib.tfb_supports_int8(weight.ggml_type.id))
        self._call = functools.partial(lib.tfb_matmul_experts, weight.ggml_type.id, self._raw.data_ptr(), experts,
                                       self._raw.stride(0), self._raw.stride(1), self.out_features, in_features,
                                       int(int8))

    def takes(self) -> bool:
        """Whether the kernels take this weight (formats with a fused matrix-vector product)."""
        return self._call(None, 0, None, 1, None) == 0

    def __call__(self, ids: torch.Tensor, x: torch.Tensor, share: int) -> torch.Tensor:
        """y[p] = x[p // share] @ W[ids[p]].T for contiguous int64 ids [P] and float32 x [P / share, in]."""
        y = torch.empty(ids.shape[0], self.out_features, dtype=torch.float32)
        _check(self._call(ids.data_ptr(), ids.shape[0], x.data_ptr(), share, y.data_ptr()),
               f"expert products of {self.name}")
        return y


def prepare_experts(weight: PackedTensor, int8_activations: bool = False) -> PreparedExperts | None:
    """An expert weight ready for tfb_matmul_experts; None where its type has no such products."""
    lib = library()
    if lib is None or not supports(weight.ggml_type):
        return None
    prepared = PreparedExperts(lib, weight, int8_activations)
    return prepared if prepared.takes() else None


def matmul(x: torch.Tensor, weight: PackedTensor, int8_activations: bool = False) -> torch.Tensor | None:
    """x @ W.T for a contiguous float32 x [M, in] and a packed W [out, in]."""
    prepared = prepare(weight, int8_activations)
    return None if prepared is None else prepared(x)


def supports_int8(ggml_type: GGMLType) -> bool:
    """Whether `ggml_type` has products with 8-bit activations."""
    lib = library()
    return lib is not None and bool(lib.tfb_supports_int8(ggml_type.id))


def int8_rows(ggml_type: GGMLType) -> int:
    """Up to how many activation rows a product rounds them to 8 bits (int8_activations=True) for this type,
    with the kernels in use (0: never); more rows take the float32 products."""
    lib = library()
    return 0 if lib is None else int(lib.tfb_int8_rows(ggml_type.id))


def dequantize_into(weight: PackedTensor, out: torch.Tensor) -> bool:
    """Expand `weight` into the contiguous float32 `out` (bit-exact); False if not native."""
    if not supports(weight.ggml_type):
        return False
    raw = weight.raw if weight.raw.is_contiguous() else weight.raw.contiguous()
    assert out.is_contiguous() and out.dtype == torch.float32 and out.numel() == math.prod(weight.shape)
    n_blocks = raw.numel() // weight.ggml_type.type_size
    _check(library().tfb_dequantize(weight.ggml_type.id, raw.data_ptr(), n_blocks, out.data_ptr()),  # type: ignore[union-attr]
           f"dequantize of {weight.name or 'a weight'}")
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float = 0.0,
           sinks: torch.Tensor | None = None) -> torch.Tensor | None:
    """One decoding step's attention: q [b, kv_heads, rows, d] float32 (the query heads sharing each KV
    head), k [b, kv_heads, s, d] and v [b, kv_heads, s, dv] float32 or float16 (views of a KV cache are
    fine), every key visible; scores scaled, then soft-capped where softcap > 0; sinks [kv_heads * rows]
    join the softmax's denominator. Returns [b, kv_heads, rows, dv] float32, or None where the native
    path cannot serve the call."""
    lib = library()
    if lib is None or q.dtype != torch.float32 or k.dtype != v.dtype or k.dtype not in (torch.float32, torch.float16):
        return None
    b, kv_heads, rows, d = q.shape
    s, dv = k.shape[2], v.shape[3]
    # each tensor's KV heads must sit at one stride, batch rows after each other, rows of unit stride
    for t in (k, v):
        if t.stride(-1) != 1 or (b > 1 and t.stride(0) != kv_heads * t.stride(1)):
            return None
    q = q.contiguous()
    sinks = None if sinks is None else sinks.float().contiguous()
    out = torch.empty(b, kv_heads, rows, dv, dtype=torch.float32)
    _check(lib.tfb_attend(q.data_ptr(), b, kv_heads, rows, d, k.data_ptr(), k.stride(1), k.stride(2), v.data_ptr(),
                          v.stride(1), v.stride(2), dv, s, int(k.dtype == torch.float16), scale, softcap,
                          None if sinks is None else sinks.data_ptr(), out.data_ptr()), "attention")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension of a float32 x; None where the native
    path cannot serve the call."""
    lib = library()
    if lib is None or x.dtype != torch.float32 or (weight is not None and weight.dtype != torch.float32):
        return None
    x = x.contiguous()
    n = x.shape[-1]
    y = torch.empty_like(x)
    w = None if weight is None else weight.contiguous()
    _check(lib.tfb_rms_norm(x.data_ptr(), x.numel() // n, n, None if w is None else w.data_ptr(), eps,
                            y.data_ptr()), "RMS norm")
    return y


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: int, adjacent: bool) -> torch.Tensor | None:
    """x [..., tokens, heads, head_dim] float32 with the leading `dims` of each head rotated by cos, sin
    [..., tokens, dims / 2] (pairs (i, i + dims/2), or (2i, 2i + 1) where `adjacent`), exactly as the torch
    path computes it; None where the native path cannot serve the call."""
    lib = library()
    if lib is None or x.dtype != torch.float32 or cos.dtype != torch.float32:
        return None
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    heads, head_dim = x.shape[-2], x.shape[-1]
    tokens = x.numel() // (heads * head_dim)
    if cos.numel() != tokens * (dims // 2) or sin.shape != cos.shape:
        return None
    y = torch.empty_like(x)
    _check(lib.tfb_rope(x.data_ptr(), tokens, heads, head_dim, dims, cos.data_ptr(), sin.data_ptr(), int(adjacent),
                        y.data_ptr()), "rope")
    return y


def run_step(ops: ctypes.Array, count: int, rows: int, positions: ctypes.Array, slots: ctypes.Array,
             slot_count: int) -> None:
    """Run a planned decoding step's `count` operations for `rows` tokens, row r at positions[r] with its slots
    from slots[r * slot_count] (tfb.nn.step, step.c)."""
    lib = library()
    assert lib is not None, "a step is planned only where the library loaded"
    _check(lib.tfb_step(ops, count, rows, positions, slots, slot_count), "decoding step")
