"""RMSNorm and LayerNorm with optional weight, bias and weight offset, computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfb.nn.linear import check_shape
from tfb.quant import native


class Norm(nn.Module):
    """rmsnorm: x / sqrt(mean(x^2) + eps); layernorm: (x - mean) / sqrt(var + eps); then * (offset + w) + b.

    Normalises over the last dimension. Weight and bias are set by the loader; without them the norm
    has no scale (1) or shift (0).
    """

    def __init__(self, kind: str, dim: int, eps: float, weight_offset: float = 0.0) -> None:
        super().__init__()
        self.kind, self.dim, self.eps, self.weight_offset = kind, dim, eps, weight_offset
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.dim,)

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        check_shape(name, tuple(weight.shape), (self.dim,))
        self.weight = weight.float() + self.weight_offset

    def set_bias(self, name: str, bias: torch.Tensor) -> None:
        check_shape(name, tuple(bias.shape), (self.dim,))
        self.bias = bias.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 input (the decode step's case) goes through without dtype conversions: each costs a call
        h, shape = x if x.dtype == torch.float32 else x.float(), (self.dim,)
        if self.kind == "layernorm":
            h = F.layer_norm(h, shape, self.weight, self.bias, self.eps)
        else:
            fast = native.rms_norm(h, self.weight, self.eps) if h.numel() else None
            h = fast if fast is not None else F.rms_norm(h, shape, self.weight, self.eps)
            if self.bias is not None:
                h = h + self.bias
        return h if h.dtype == x.dtype else h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.kind}, dim={self.dim}, eps={self.eps}"
