"""Feed-forward networks: gated or plain, separate or fused gate/up, and the activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tfb.nn.linear import Linear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_erf": F.gelu,
    "relu": F.relu,
    "relu_squared": lambda x: F.relu(x).square(),
}


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str, limit: float) -> torch.Tensor:
    """act(gate) * up; with a limit, act(gate) <= limit and up is clamped to [-limit, limit]."""
    act = ACTIVATIONS[activation](gate)
    if limit:
        act, up = act.clamp(max=limit), up.clamp(-limit, limit)
    return act * up


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, *, gated: bool, fused_gate_up: bool, activation: str,
                 limit: float = 0.0) -> None:
        super().__init__()
        self.gated, self.fused, self.activation, self.limit = gated, fused_gate_up, activation, limit
        self.up = Linear(hidden, 2 * inner if fused_gate_up else inner)
        if gated and not fused_gate_up:
            self.gate = Linear(hidden, inner)
        self.down = Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down(ACTIVATIONS[self.activation](self.up(x)))
        if self.fused:
            gate, up = self.up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        return self.down(gated_activation(gate, up, self.activation, self.limit))
