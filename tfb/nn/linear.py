"""Linear layers and embeddings whose weights stay as the file stores them.

A weight is either a float tensor in the compute dtype (F32 files, or F16/BF16 files run in that dtype:
zero-copy views of the memory map) or a PackedTensor of ggml blocks, expanded in row chunks on use so
that scratch memory stays bounded whatever the layer's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfb.errors import WeightError
from tfb.quant import PackedTensor

CHUNK_BYTES = 32 * 1024 * 1024  # scratch for one expanded slice of a packed weight

Weight = torch.Tensor | PackedTensor


def check_shape(name: str, found: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(found) != tuple(expected):
        raise WeightError(f"tensor {name!r} has shape {list(found)}, expected {list(expected)} from the "
                          "config (check the spec's hparams against the file's metadata)")


def packed_matmul(x: torch.Tensor, weight: PackedTensor) -> torch.Tensor:
    """x @ W.T for a packed W of shape [out, in], expanding at most CHUNK_BYTES of W at a time."""
    out_features, in_features = weight.shape
    rows = max(1, CHUNK_BYTES // (in_features * x.element_size()))
    if rows >= out_features:
        return x @ weight.dequantize(x.dtype).T
    pieces = [x @ weight[r:r + rows].dequantize(x.dtype).T for r in range(0, out_features, rows)]
    return torch.cat(pieces, dim=-1)


class Linear(nn.Module):
    """y = x W^T + b. The loader sets `weight` (and `bias` when the file has one)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight: torch.Tensor | None = None
        self.packed: PackedTensor | None = None
        self.bias: torch.Tensor | None = None

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        if self.packed is None:
            raise WeightError("a linear layer was used before its weight was loaded")
        y = packed_matmul(x, self.packed)
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
            return rows.dequantize(dtype)[inverse].reshape(*ids.shape, self.dim)
        return F.embedding(ids, self.table).to(dtype)
