"""The `ssd` mixer kind (Mamba-2, SSD): its layer state is the conv window (the last kernel - 1 inputs of
the conv) and the SSM state [heads, head_dim, state] of each sequence, float32 whatever the weights' type,
of constant size in the context length. A prompt is scanned in chunks of CHUNK positions with the SSD closed
form, a decoding step is the same with one position. The math: tfb/spec/kinds/ssd.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.cache import Step
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import Linear, check_shape
from tfb.spec.kinds.ssd import SSD as Section

KIND = "ssd"
TARGETS = {
    "ssm_in": ("in_proj", "set_weight"), "ssm_out": ("out_proj", "set_weight"),
    "ssm_conv1d": ("", "set_conv"), "ssm_conv1d_bias": ("", "set_conv_bias"), "ssm_dt_bias": ("", "set_dt_bias"),
    "ssm_a": ("", "set_a"), "ssm_d": ("", "set_d"), "ssm_norm": ("norm", "set_weight"),
}
CHUNK = 64  # positions scanned at once: the closed form costs CHUNK^2 per head and chunk


@dataclass(frozen=True)
class SSMShape:
    hidden: int
    heads: int
    head_dim: int
    groups: int
    state: int
    kernel: int

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_dim(self) -> int:  # the conv runs over x, B and C
        return self.inner + 2 * self.groups * self.state


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> SSDLayer:
    shape = SSMShape(c.hidden_size, c.ssm_head_count, c.ssm_inner_size // c.ssm_head_count, c.ssm_group_count,
                     c.ssm_state_size, c.ssm_conv_kernel)
    return SSDLayer(shape, ctx, c.norm_eps)


class SSMState:
    """One layer's recurrent state: the conv window [batch, conv_dim, kernel - 1] and the SSM state
    [batch, heads, head_dim, state], both float32; None until the first forward call."""

    rewindable = False

    def __init__(self, conv: torch.Tensor | None = None, ssm: torch.Tensor | None = None) -> None:
        self.conv, self.ssm = conv, ssm

    def truncate(self, length: int) -> None:
        raise RuntimeError("a recurrent state cannot forget positions; restore a snapshot instead")

    def copy(self) -> SSMState:
        return SSMState(None if self.conv is None else self.conv.clone(),
                        None if self.ssm is None else self.ssm.clone())


class SSDLayer(nn.Module):
    def __init__(self, shape: SSMShape, ctx: BuildContext, eps: float) -> None:
        super().__init__()
        s = self.shape = shape
        self.in_proj = Linear(s.hidden, s.inner + s.conv_dim + s.heads)
        self.out_proj = Linear(s.inner, s.hidden)
        self.norm = ctx.norm(s.inner // s.groups, eps, kind="rmsnorm", groups=s.groups)
        self.conv_weight = torch.zeros(s.conv_dim, s.kernel)
        self.conv_bias: torch.Tensor | None = None
        self.dt_bias = torch.zeros(s.heads)
        self.a = torch.zeros(s.heads)
        self.d = torch.zeros(s.heads)

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        s = self.shape
        return {"set_conv": (s.conv_dim, s.kernel), "set_conv_bias": (s.conv_dim,), "set_dt_bias": (s.heads,),
                "set_a": (s.heads, 1), "set_d": (s.heads, 1)}[method]

    def _checked(self, name: str, value: torch.Tensor, method: str) -> torch.Tensor:
        check_shape(name, tuple(value.shape), self.tensor_shape(method))
        return value.float()

    def set_conv(self, name: str, w: torch.Tensor) -> None:
        self.conv_weight = self._checked(name, w, "set_conv")

    def set_conv_bias(self, name: str, b: torch.Tensor) -> None:
        self.conv_bias = self._checked(name, b, "set_conv_bias")

    def set_dt_bias(self, name: str, b: torch.Tensor) -> None:
        self.dt_bias = self._checked(name, b, "set_dt_bias")

    def set_a(self, name: str, a: torch.Tensor) -> None:
        self.a = self._checked(name, a, "set_a").view(-1)  # A itself (the converter stores -exp(A_log))

    def set_d(self, name: str, d: torch.Tensor) -> None:
        self.d = self._checked(name, d, "set_d").view(-1)

    def new_state(self, dtype: torch.dtype | None) -> SSMState:
        return SSMState()  # float32 whatever the cache dtype: the state sums every position

    def forward(self, x: torch.Tensor, step: Step, state: SSMState | None) -> torch.Tensor:
        s = self.shape
        b, t, _ = x.shape
        z, xbc, dt = self.in_proj(x).float().split([s.inner, s.conv_dim, s.heads], dim=-1)
        window = state.conv if state is not None and state.conv is not None and step.start > 0 else None
        xbc, window = self.conv(xbc, window)
        h, bmat, cmat = xbc.split([s.inner, s.groups * s.state, s.groups * s.state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        ssm = state.ssm if state is not None and state.ssm is not None and step.start > 0 else None
        if ssm is None:
            ssm = x.new_zeros(b, s.heads, s.head_dim, s.state, dtype=torch.float32)
        y, ssm = self.scan(h.view(b, t, s.heads, s.head_dim), dt, bmat.view(b, t, s.groups, s.state),
                           cmat.view(b, t, s.groups, s.state), ssm)
        if state is not None:
            state.conv, state.ssm = window, ssm
        y = y + self.d[:, None] * h.view(b, t, s.heads, s.head_dim)
        y = y.reshape(b, t, s.inner) * F.silu(z)
        if self.norm.weight is not None:  # absent only where the section's norm is optional and the file lacks it
            y = self.norm(y.view(b, t, s.groups, s.inner // s.groups)).reshape(b, t, s.inner)
        return self.out_proj(y.to(x.dtype))

    def conv(self, xbc: torch.Tensor, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """silu(causal depthwise conv + bias) of xbc [b, t, conv_dim], after `window` (the previous kernel - 1
        inputs, zeros at the start); returns the outputs and the new window."""
        b, _, channels = xbc.shape
        keep = self.shape.kernel - 1
        if window is None:
            window = xbc.new_zeros(b, channels, keep)
        full = torch.cat((window.transpose(1, 2), xbc), dim=1)  # [b, keep + t, channels]
        t = xbc.shape[1]
        w = self.conv_weight  # [channels, kernel]: K shifted multiply-adds (a depthwise conv of a few taps)
        out = full[:, :t] * w[:, 0] if self.conv_bias is None else torch.addcmul(self.conv_bias, full[:, :t], w[:, 0])
        for j in range(1, self.shape.kernel):
            out = out.addcmul_(full[:, j:j + t], w[:, j])
        return F.silu(out), full[:, full.shape[1] - keep:].transpose(1, 2).contiguous()

    def scan(self, x: torch.Tensor, dt: torch.Tensor, bmat: torch.Tensor, cmat: torch.Tensor,
             ssm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selective scan over x [b, t, heads, head_dim], dt [b, t, heads], B/C [b, t, groups, state] from
        the SSM state [b, heads, head_dim, state]: the outputs y [b, t, heads, head_dim] (without D) and the
        state after the last position, CHUNK positions at a time. Inside, heads are [groups, heads per group]
        so that B and C are used per group, never copied per head."""
        b, t, heads, dim = x.shape
        g, n = self.shape.groups, self.shape.state
        r = heads // g
        xs = x.permute(0, 2, 1, 3).reshape(b, g, r, t, dim)  # [b, g, r, t, p]
        logs = (dt * self.a).permute(0, 2, 1).reshape(b, g, r, t)  # dt A, the log decay of each step
        dts = dt.permute(0, 2, 1).reshape(b, g, r, t)
        bs, cs = bmat.permute(0, 2, 1, 3).unsqueeze(2), cmat.permute(0, 2, 1, 3).unsqueeze(2)  # [b, g, 1, t, n]
        state = ssm.view(b, g, r, dim, n)
        outs = []
        for start in range(0, t, CHUNK):
            part = slice(start, start + CHUNK)
            y, state = self._chunk(xs[..., part, :], logs[..., part], dts[..., part], bs[..., part, :],
                                   cs[..., part, :], state)
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
        return y.reshape(b, heads, t, dim).transpose(1, 2), state.reshape(b, heads, dim, n)

    @staticmethod
    def _chunk(x: torch.Tensor, logs: torch.Tensor, dt: torch.Tensor, bmat: torch.Tensor, cmat: torch.Tensor,
               ssm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk in closed form (x [b, g, r, l, p], logs and dt [b, g, r, l], B/C [b, g, 1, l, n], the state
        [b, g, r, p, n]); cum = running sum of dt A (log decay, <= 0 per step):
        y_l = sum_{s<=l} exp(cum_l - cum_s) (C_l . B_s) dt_s x_s + exp(cum_l) C_l S_0,
        S_end = exp(cum_last) S_0 + sum_s exp(cum_last - cum_s) dt_s x_s B_s^T."""
        t = x.shape[3]
        cum = torch.cumsum(logs, dim=-1)
        if t == 1:  # a decoding step: the recurrence itself
            ssm = ssm * torch.exp(cum)[..., None] + (x * dt[..., None]).transpose(-1, -2) @ bmat
            return cmat @ ssm.transpose(-1, -2), ssm
        gaps = cum[..., :, None] - cum[..., None, :]  # [.., l, s]: cum_l - cum_s
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        weights = torch.exp(gaps.masked_fill(~causal, float("-inf"))) * dt[..., None, :]
        y = ((cmat @ bmat.transpose(-1, -2)) * weights) @ x  # C_l . B_s once per group
        y = y + (cmat @ ssm.transpose(-1, -2)) * torch.exp(cum)[..., None]
        last = cum[..., -1:]
        carry = torch.exp(last - cum) * dt  # [b, g, r, l]
        ssm = ssm * torch.exp(last)[..., None] + (x * carry[..., None]).transpose(-1, -2) @ bmat
        return y, ssm
