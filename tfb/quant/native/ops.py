"""torch-facing wrappers of the native kernels: matmul with packed weights, dequantize, threads.

Every function returns None where the native path cannot serve the call (library unavailable, storage
type without native kernels), and the caller then takes the torch path.

Activation rows: one row takes the fused matrix-vector product, which expands blocks in registers; more
rows take a C kernel that dequantizes 16 weight rows at a time into a per-thread scratch and multiplies
them with register-blocked float32 dot products. That beat torch's GEMM on weights expanded by
`dequantize_into` at every row count measured, 2 to 2048 (tools/bench_matmul.py, docs/benchmarks.md);
beyond NATIVE_MAX_ROWS rows tfb.nn.linear hands the product to torch all the same.
"""

from __future__ import annotations

import ctypes
import math
import os

import torch

from tfb.gguf.ggml_types import GGMLType
from tfb.quant.native.library import load
from tfb.quant.packed import PackedTensor

NATIVE_MAX_ROWS = 2048

_supported: dict[int, bool] = {}


def library() -> ctypes.CDLL | None:
    """The loaded library, with its thread count set on first use (TFB_THREADS, else torch's count)."""
    lib = load()
    if lib is not None and not _supported.get(-1):
        _supported[-1] = True
        lib.tfb_set_threads(default_threads())
    return lib


def default_threads() -> int:
    value = os.environ.get("TFB_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else torch.get_num_threads()


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


def set_isa(name: str = "") -> bool:
    """Use the kernels of one instruction set ("avx512", "avx2", "portable"; "" for the best); for tests."""
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


def matmul(x: torch.Tensor, weight: PackedTensor) -> torch.Tensor | None:
    """x @ W.T for a contiguous float32 x [M, in] and a packed W [out, in]."""
    if not supports(weight.ggml_type):
        return None
    out_features, in_features = weight.shape
    raw = _rows(weight)
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32)
    status = library().tfb_matmul(weight.ggml_type.id, raw.data_ptr(), raw.stride(0), out_features,  # type: ignore[union-attr]
                                  in_features, x.data_ptr(), x.shape[0], y.data_ptr())
    _check(status, f"matmul of {weight.name or 'a weight'} ({weight.ggml_type.name})")
    return y


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


def dequantize(weight: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The weight expanded to `dtype`, bit-exact with the torch dequantizers; None if not native."""
    out = torch.empty(weight.shape, dtype=torch.float32)
    if not dequantize_into(weight, out):
        return None
    return out if dtype == torch.float32 else out.to(dtype)
