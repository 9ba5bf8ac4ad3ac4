"""Feed-forward networks: gated or plain, separate or fused gate/up, and their activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.linear import Linear
from tfb.nn.step import StepPlan, Unplannable
from tfb.spec.kinds._mlp import MLPShape


@dataclass(frozen=True)
class Activation:
    """act(x) for plain MLPs; act(gate) * (up + up_offset) for gated ones, optionally clamped by `limit`:
    up to [-limit, limit], and the gate either after the activation (act(gate) <= limit) or before it
    (act(min(gate, limit)))."""

    kind: str  # silu, gelu_tanh, gelu_erf, relu, relu_squared
    limit: float = 0.0
    clamp_before: bool = False
    silu_beta: float = 1.0
    up_offset: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "silu":
            return x * torch.sigmoid(self.silu_beta * x) if self.silu_beta != 1.0 else F.silu(x)
        if self.kind == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if self.kind == "gelu_erf":
            return F.gelu(x)
        if self.kind == "relu":
            return F.relu(x)
        return F.relu(x).square()

    def gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if not self.limit:
            act = self(gate)
        elif self.clamp_before:
            act = self(gate.clamp(max=self.limit))
        else:
            act = self(gate).clamp(max=self.limit)
        if self.limit:
            up = up.clamp(-self.limit, self.limit)
        return act * (up + self.up_offset if self.up_offset else up)


def activation_of(section: MLPShape, c: ModelConfig) -> Activation:
    """The activation a dense or expert section asks for, with the config's clamp and constants."""
    return Activation(section.activation, limit=c.swiglu_limit, clamp_before=section.clamp_gate == "before_activation",
                      silu_beta=c.silu_beta, up_offset=c.up_offset)


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, *, gated: bool, fused_gate_up: bool, activation: Activation) -> None:
        super().__init__()
        self.gated, self.fused, self.activation = gated, fused_gate_up, activation
        self.up = Linear(hidden, 2 * inner if fused_gate_up else inner)
        if gated and not fused_gate_up:
            self.gate = Linear(hidden, inner)
        self.down = Linear(inner, hidden)

    def plan_step(self, plan: StepPlan, h: torch.Tensor) -> torch.Tensor:
        """The native step of this MLP (tfb.nn.step): what `forward` computes for one token."""
        act = self.activation
        if act.limit or act.silu_beta != 1.0 or act.up_offset:
            raise Unplannable("a clamped, scaled or offset activation")
        inner, hidden = self.down.in_features, self.down.out_features
        if not self.gated:
            up = plan.scratch("up", inner)
            plan.linear(self.up, h, up)
            plan.glu(act.kind, up, None, up)
            gated = up
        else:
            if self.fused:
                both = plan.scratch("gate_up", 2 * inner)
                plan.linear(self.up, h, both)
                gate, up = plan.split(both, [inner, inner], "gate_up")
            else:
                gate, up = plan.scratch("gate", inner), plan.scratch("up", inner)
                plan.linear(self.gate, h, gate)
                plan.linear(self.up, h, up)
            gated = plan.scratch("gated", inner)
            plan.glu(act.kind, gate, up, gated)
        y = plan.scratch("ffn_out", hidden)
        plan.linear(self.down, gated, y)
        return y

    def forward(self, x: torch.Tensor, step: object = None) -> torch.Tensor:
        if not self.gated:
            return self.down(self.activation(self.up(x)))
        if self.fused:
            gate, up = self.up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        return self.down(self.activation.gated(gate, up))
