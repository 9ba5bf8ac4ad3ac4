"""Unquantized storage types: float and integer elements, one per "block"."""

from __future__ import annotations

import torch

from tfb.quant.common import register, register_kernel


def _register_cast(name: str, dtype: torch.dtype) -> None:
    """Elements stored as `dtype`, converted to float32 (exact, or rounded to nearest for F64 and I32)."""

    def kernel(blocks: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(blocks.contiguous().view(dtype))

    register_kernel(name, 1)(kernel)


for _name, _dtype in [("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16), ("F64", torch.float64),
                      ("I8", torch.int8), ("I16", torch.int16), ("I32", torch.int32)]:
    _register_cast(_name, _dtype)


@register("F32")
def _f32(blocks: torch.Tensor) -> torch.Tensor:
    # Already float32: a view of the bytes, no copy (as the reference's `view`); the kernel copies.
    return blocks.contiguous().view(torch.float32)
