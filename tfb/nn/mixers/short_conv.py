"""The `short_conv` mixer kind: a gated depthwise causal convolution over the last L positions (LFM2). Its
layer state is the last L - 1 convolution inputs, float32 and of fixed size. A call of any length is one
conv1d over its positions with the stored window in front, never a loop over tokens. The math:
tfb/spec/kinds/short_conv.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.errors import InputError
from tfb.nn.cache import Step
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import Linear, check_shape
from tfb.nn.step import StepPlan
from tfb.spec.kinds.short_conv import ShortConv as Section

KIND = "short_conv"
TARGETS = {
    "shortconv_in_proj": ("in_proj", "set_weight"),
    "shortconv_conv": ("", "set_kernel"),
    "shortconv_out_proj": ("out_proj", "set_weight"),
}


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> ShortConv:
    return ShortConv(c.hidden_size, c.shortconv_l_cache)


class ConvWindow:
    """The last `width` convolution inputs of each channel ([batch, channels, width], float32); empty until
    the first call. A recurrent state: it cannot forget positions, snapshots copy it."""

    rewindable = False

    def __init__(self, width: int) -> None:
        self.width = width
        self.window: torch.Tensor | None = None

    def truncate(self, length: int) -> None:
        raise RuntimeError("a convolution window cannot go back to an earlier position; restore a snapshot")

    def copy(self) -> ConvWindow:
        out = ConvWindow(self.width)
        out.window = None if self.window is None else self.window.clone()
        return out


class ShortConv(nn.Module):
    def __init__(self, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden, self.kernel = hidden, kernel
        self.in_proj = Linear(hidden, 3 * hidden)
        self.out_proj = Linear(hidden, hidden)
        self.weight = torch.zeros(hidden, 1, kernel)  # conv1d's depthwise layout [channels, 1, L]

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.hidden, self.kernel)

    def set_kernel(self, name: str, kernel: torch.Tensor) -> None:
        check_shape(name, tuple(kernel.shape), (self.hidden, self.kernel))
        self.weight = kernel.float().reshape(self.hidden, 1, self.kernel).contiguous()

    def new_state(self, dtype: torch.dtype | None) -> ConvWindow:
        return ConvWindow(self.kernel - 1)  # float32 whatever the cache dtype (a summary, not positions)

    def forward(self, x: torch.Tensor, step: Step, state: ConvWindow | None) -> torch.Tensor:
        gate_in, gate_out, values = self.in_proj(x).float().chunk(3, dim=-1)
        u = (gate_in * values).transpose(1, 2)  # [b, h, t]
        past = self._past(state, step, x.shape[0], u)
        full = torch.cat((past, u), dim=2)  # [b, h, L - 1 + t]: the window in front of the new inputs
        if state is not None:
            state.window = full[:, :, full.shape[2] - state.width:].clone()
        z = F.conv1d(full, self.weight, groups=self.hidden)  # [b, h, t]: only full windows, so causal
        return self.out_proj((gate_out * z.transpose(1, 2)).to(x.dtype))

    def plan_step(self, plan: StepPlan, h: torch.Tensor) -> torch.Tensor:
        """The native step of this layer (tfb.nn.step): what `forward` computes for one token, the window
        (ConvWindow.window) updated in place."""
        projected = plan.scratch("conv_in", 3 * self.hidden)
        plan.linear(self.in_proj, h, projected)
        gate_in, gate_out, values = plan.split(projected, [self.hidden] * 3, "conv_in")
        u, z = plan.scratch("conv_u", self.hidden), plan.scratch("conv_z", self.hidden)
        plan.mul(gate_in, values, u)
        plan.conv(u, self.weight, plan.state("window", (self.hidden, self.kernel - 1), zero_at_start=True), z)
        plan.mul(gate_out, z, z)
        y = plan.scratch("conv_out", self.hidden)
        plan.linear(self.out_proj, z, y)
        return y

    def _past(self, state: ConvWindow | None, step: Step, batch: int, u: torch.Tensor) -> torch.Tensor:
        """The inputs before this call's first position: zeros at the start of a sequence."""
        if state is None or state.window is None or step.start == 0:
            return u.new_zeros(batch, self.hidden, self.kernel - 1)
        if state.window.shape[0] != batch:
            raise InputError(f"the cache holds {state.window.shape[0]} sequences, this call has {batch}")
        return state.window
