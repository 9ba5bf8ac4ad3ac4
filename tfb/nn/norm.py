"""RMSNorm and LayerNorm with optional weight, bias and weight offset, computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfb.nn.linear import check_shape
from tfb.nn.step import StepPlan, Unplannable
from tfb.quant import native


class Norm(nn.Module):
    """rmsnorm: x / sqrt(mean(x^2) + eps); layernorm: (x - mean) / sqrt(var + eps); then * (offset + w) + b.

    Normalises over the last dimension. Weight and bias are set by the loader; without them the norm
    has no scale (1) or shift (0). With `groups`, weight and bias are [groups, dim]: one row for each of the
    input's `groups` vectors of the next-to-last dimension (a Q/K norm with weights of its own per head).
    """

    def __init__(self, kind: str, dim: int, eps: float, weight_offset: float = 0.0, groups: int = 0) -> None:
        super().__init__()
        self.kind, self.dim, self.eps, self.weight_offset, self.groups = kind, dim, eps, weight_offset, groups
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.groups, self.dim) if self.groups else (self.dim,)

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        check_shape(name, tuple(weight.shape), self.tensor_shape("set_weight"))
        self.weight = weight.float() + self.weight_offset

    def set_bias(self, name: str, bias: torch.Tensor) -> None:
        check_shape(name, tuple(bias.shape), self.tensor_shape("set_bias"))
        self.bias = bias.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 input (the decode step's case) goes through without dtype conversions: each costs a call
        h, shape = x if x.dtype == torch.float32 else x.float(), (self.dim,)
        if self.groups:  # torch's norms take weights of the normalised shape only: scale and shift after
            h = F.layer_norm(h, shape, eps=self.eps) if self.kind == "layernorm" else F.rms_norm(h, shape, eps=self.eps)
            h = h if self.weight is None else h * self.weight
            h = h if self.bias is None else h + self.bias
        elif self.kind == "layernorm":
            h = F.layer_norm(h, shape, self.weight, self.bias, self.eps)
        else:
            fast = native.rms_norm(h, self.weight, self.eps) if h.numel() else None
            h = fast if fast is not None else F.rms_norm(h, shape, self.weight, self.eps)
            if self.bias is not None:
                h = h + self.bias
        return h if h.dtype == x.dtype else h.to(x.dtype)

    def plan_step(self, plan: StepPlan, x: torch.Tensor, name: str, count: int = 1) -> torch.Tensor:
        """The native step's norm of x (`count` vectors of `dim` a row) into the plan's buffer `name`."""
        if self.kind != "rmsnorm" or self.groups or self.bias is not None:
            raise Unplannable(f"a {self.kind} norm" + (" with a bias or weights per head" if self.groups or
                                                       self.bias is not None else ""))
        y = plan.scratch(name, x.shape[-1])
        plan.rms_norm(x, self.weight, self.eps, y, count)
        return y

    def extra_repr(self) -> str:
        return f"{self.kind}, dim={self.dim}, eps={self.eps}" + (f", groups={self.groups}" if self.groups else "")
