"""Weights that stay in their GGUF storage type in memory and expand on use."""

from __future__ import annotations

import math

import torch

from tfb.errors import WeightError
from tfb.gguf.ggml_types import NOT_WEIGHT_TYPES, GGMLType
from tfb.quant import native
from tfb.quant.blocks import DEQUANTIZERS, KERNELS, dequantize_into
from tfb.quant.common import empty_float32


def weight_types() -> list[str]:
    """The storage types tfb loads model weights from."""
    return sorted(n for n in DEQUANTIZERS if n not in NOT_WEIGHT_TYPES)


def is_supported(ggml_type: GGMLType) -> bool:
    """Whether tfb loads model weights stored in this type."""
    return ggml_type.name in DEQUANTIZERS and ggml_type.name not in NOT_WEIGHT_TYPES


class PackedTensor:
    """A tensor of `shape` (torch order) kept as raw ggml blocks: uint8 [*shape[:-1], row_bytes].

    Row operations (selecting rows, experts) slice the raw bytes; only `dequantize` expands values.
    """

    def __init__(self, raw: torch.Tensor, ggml_type: GGMLType, shape: tuple[int, ...], name: str = "") -> None:
        if not is_supported(ggml_type):
            raise WeightError(f"tensor {name!r}: storage type {ggml_type.name} is not supported for weights "
                              f"(supported: {', '.join(weight_types())})")
        row_bytes = ggml_type.row_bytes(shape[-1])
        self.raw = raw.reshape(*shape[:-1], row_bytes)
        self.ggml_type = ggml_type
        self.shape = shape
        self.name = name

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def __getitem__(self, index: int | slice) -> PackedTensor:
        """Rows (or experts) of the outermost dimension, without expanding anything."""
        raw = self.raw[index]
        shape = (*raw.shape[:-1], self.shape[-1])
        return PackedTensor(raw, self.ggml_type, shape, self.name)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values in a new tensor of `dtype`."""
        out = empty_float32(math.prod(self.shape[:-1]), self.shape[-1]).view(self.shape)
        self.dequantize_into(out)
        return out.to(dtype)

    def dequantize_into(self, out: torch.Tensor) -> None:
        """The float32 values into the contiguous `out` of this shape: the native kernels where they cover the
        type, else the torch dequantizers (the definition the native kernels are tested to equal, bit for bit)."""
        if native.dequantize_into(self, out):
            return
        block_size, kernel = KERNELS[self.ggml_type.name]
        dequantize_into(self.raw.reshape(-1, self.ggml_type.type_size), out.view(-1, block_size), kernel, block_size)
