"""Linear layers and embeddings whose weights stay as the file stores them.

A weight is either a float tensor in the compute dtype (F32 files, or F16/BF16 files run in that dtype:
zero-copy views of the memory map) or a PackedTensor of ggml blocks. Packed weights are multiplied in
float32 whatever the compute dtype: by the native kernels (tfb.quant.native) where they cover the type,
else by torch's GEMM on weight rows expanded CHUNK_BYTES at a time into a reused buffer (the native
dequantizer where it covers the type, the torch dequantizers otherwise), so that scratch memory stays
bounded whatever the layer's size.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from tfb.errors import WeightError
from tfb.quant import PackedTensor, native

CHUNK_BYTES = 8 * 1024 * 1024  # float32 scratch for the weight rows expanded at a time

_scratch = threading.local()

Weight = torch.Tensor | PackedTensor


def check_shape(name: str, found: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(found) != tuple(expected):
        raise WeightError(f"tensor {name!r} has shape {list(found)}, expected {list(expected)} from the "
                          "config (check the spec's hparams against the file's metadata)")


def packed_matmul(x: torch.Tensor, weight: PackedTensor, prepared: native.Prepared | None = None) -> torch.Tensor:
    """x @ W.T for a packed W of shape [out, in]: float32 math, the result in x's dtype. `prepared`: W
    made ready for the native kernels beforehand (else this call works that out)."""
    out_features, in_features = weight.shape
    plain = x.dtype == torch.float32 and x.is_contiguous()  # the decode step's case: no copies at all
    x2 = x.view(-1, in_features) if plain else x.reshape(-1, in_features).to(torch.float32).contiguous()
    y = None
    if x2.shape[0] <= native.NATIVE_MAX_ROWS:
        prepared = prepared or native.prepare(weight)
        y = prepared(x2) if prepared is not None else None
    if y is None:
        y = _expanded_matmul(x2, weight)
    if plain and x.dim() == 2:
        return y
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _expanded_matmul(x2: torch.Tensor, weight: PackedTensor) -> torch.Tensor:
    """torch's GEMM over chunks of weight rows, each expanded into the same float32 scratch."""
    out_features, in_features = weight.shape
    step = max(1, min(out_features, CHUNK_BYTES // (4 * in_features)))
    scratch = _scratch_buffer(step * in_features)
    y = torch.empty(x2.shape[0], out_features, dtype=torch.float32)
    for start in range(0, out_features, step):
        rows = weight[start:start + step]
        count = rows.shape[0]
        values = scratch[:count * in_features].view(count, in_features)
        rows.dequantize_into(values)
        torch.mm(x2, values.T, out=y[:, start:start + count])
    return y


def _scratch_buffer(floats: int) -> torch.Tensor:
    """A float32 buffer of at least `floats` elements, reused by this thread's calls."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < floats:
        buffer = _scratch.buffer = torch.empty(floats, dtype=torch.float32)
    return buffer


class Linear(nn.Module):
    """y = x W^T + b. The loader sets `weight` (and `bias` when the file has one)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight: torch.Tensor | None = None
        self.packed: PackedTensor | None = None
        self.bias: torch.Tensor | None = None
        self.prepared: native.Prepared | None = None  # `prepared_for` made ready for the native kernels
        self.prepared_for: PackedTensor | None = None
        self.int8_activations = False  # round activations to 8 bits in the products (llama.cpp's way)

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.out_features, self.in_features) if method == "set_weight" else (self.out_features,)

    def set_weight(self, name: str, weight: Weight) -> None:
        check_shape(name, tuple(weight.shape), self.tensor_shape("set_weight"))
        if isinstance(weight, PackedTensor):
            self.packed, self.weight = weight, None
        else:
            self.weight, self.packed = weight, None

    def set_bias(self, name: str, bias: torch.Tensor) -> None:
        check_shape(name, tuple(bias.shape), self.tensor_shape("set_bias"))
        self.bias = bias

    def use_int8_activations(self, enabled: bool) -> None:
        """Transformer.use_int8_activations, for this layer."""
        self.int8_activations, self.prepared_for = enabled, None  # prepared again on next use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        if self.packed is None:
            raise WeightError("a linear layer was used before its weight was loaded")
        if self.prepared_for is not self.packed:
            self.prepared, self.prepared_for = native.prepare(self.packed, self.int8_activations), self.packed
        y = packed_matmul(x, self.packed, self.prepared)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        storage = self.packed.ggml_type.name if self.packed is not None else str(
            self.weight.dtype if self.weight is not None else None)
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, weight={storage}"


class Embedding(nn.Module):
    """Row lookup in a [num, dim] table; packed tables expand only the rows looked up."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.num, self.dim = num, dim
        self.table: Weight | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.num, self.dim)

    def set_weight(self, name: str, weight: Weight) -> None:
        check_shape(name, tuple(weight.shape), self.tensor_shape(method="set_weight"))
        self.table = weight

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.table is None:
            raise WeightError("an embedding was used before its weight was loaded")
        if isinstance(self.table, PackedTensor):
            flat = ids.reshape(-1)
            unique, inverse = torch.unique(flat, return_inverse=True)
            rows = PackedTensor(self.table.raw[unique], self.table.ggml_type, (len(unique), self.dim))
            return rows.dequantize()[inverse].to(dtype).reshape(*ids.shape, self.dim)
        return F.embedding(ids, self.table).to(dtype)
