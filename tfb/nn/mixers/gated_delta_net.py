"""The `gated_delta_net` mixer kind: gated delta-rule linear attention. A prompt runs chunk by chunk (64
positions at a time) in the WY form of the delta rule; a decode step is the same with a chunk of one. Its layer
state is the last conv inputs and the per-head state S [d_k, d_v], float32. The math:
tfb/spec/kinds/gated_delta_net.py.

The chunked form, per value head, for a chunk of positions 1..C after a state S_0. With G_i the cumulative sum of
g over the chunk up to i and D_ij = exp(G_i - G_j) (j <= i), the delta rule unrolls to
  S_i = exp(G_i) S_0 + sum_{j<=i} D_ij k_j u_j^T,
  u_j = beta_j (v_j - exp(G_j) S_0^T k_j) - sum_{m<j} beta_j D_jm (k_j . k_m) u_m,
a unit lower-triangular system (I + A) U = beta (V - exp(G) K S_0) in the chunk's u's. Then
  o_i = exp(G_i) S_0^T q_i + sum_{j<=i} D_ij (q_i . k_j) u_j,   S_C = exp(G_C) S_0 + sum_j D_Cj k_j u_j^T.
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
from tfb.nn.step import StepPlan, Unplannable
from tfb.spec.kinds.gated_delta_net import GatedDeltaNet as Section

KIND = "gated_delta_net"
TARGETS = {
    "attn_qkv": ("qkv", "set_weight"), "attn_gate": ("z", "set_weight"), "ssm_in": ("qkvz", "set_weight"),
    "ssm_ba": ("ba", "set_weight"), "ssm_beta": ("b", "set_weight"), "ssm_alpha": ("a", "set_weight"),
    "ssm_conv1d": ("", "set_conv"), "ssm_dt_bias": ("", "set_dt_bias"), "ssm_a": ("", "set_a"),
    "ssm_norm": ("norm", "set_weight"), "ssm_out": ("out", "set_weight"),
}
CHUNK = 64
# Decays below exp(UNDERFLOW) (~1e-26) are taken as 0: far under float32's resolution next to the terms they
# join, while their products would fall into subnormal floats, which x86 CPUs multiply many times slower (a
# random layer of 16 heads of 128, a 256-token prompt, one thread: 42 ms with them, 21 ms without).
UNDERFLOW = -60.0


@dataclass(frozen=True)
class DeltaShape:
    hidden: int
    key_heads: int
    key_dim: int
    value_heads: int
    value_dim: int
    kernel: int
    fused_ba: bool
    fused_qkvz: bool  # q, k, v and z from one projection, grouped by key head
    tiled: bool  # value head h reads key head h % key_heads (else h // (value_heads / key_heads))
    eps: float

    @property
    def channels(self) -> int:  # the convolved q, k and v
        return 2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> GatedDeltaNetLayer:
    shape = DeltaShape(c.hidden_size, c.ssm_group_count, c.ssm_state_size, c.ssm_time_step_rank,
                       c.ssm_inner_size // c.ssm_time_step_rank, c.ssm_conv_kernel, section.beta_alpha == "fused",
                       c.fused_qkvz, section.value_heads == "tiled", c.norm_eps)
    return GatedDeltaNetLayer(shape, ctx)


class DeltaState:
    """A gated delta-net layer's state: the last kernel - 1 conv inputs [b, channels, kernel - 1] and S
    [b, value_heads, key_dim, value_dim], both float32; constant in the context length, so it cannot forget
    positions (snapshots copy it)."""

    rewindable = False

    def __init__(self) -> None:
        self.conv: torch.Tensor | None = None
        self.ssm: torch.Tensor | None = None

    def truncate(self, length: int) -> None:
        raise RuntimeError("a recurrent state cannot be truncated; restore a snapshot")

    def copy(self) -> DeltaState:
        out = DeltaState()
        out.conv = None if self.conv is None else self.conv.clone()
        out.ssm = None if self.ssm is None else self.ssm.clone()
        return out


class GatedDeltaNetLayer(nn.Module):
    def __init__(self, shape: DeltaShape, ctx: BuildContext) -> None:
        super().__init__()
        s = self.shape = shape
        if s.fused_qkvz:
            self.qkvz = Linear(s.hidden, s.channels + s.value_heads * s.value_dim)
        else:
            self.qkv = Linear(s.hidden, s.channels)
            self.z = Linear(s.hidden, s.value_heads * s.value_dim)
        if s.fused_ba:
            self.ba = Linear(s.hidden, 2 * s.value_heads)
        else:
            self.b = Linear(s.hidden, s.value_heads)
            self.a = Linear(s.hidden, s.value_heads)
        self.norm = ctx.norm(s.value_dim, s.eps, "rmsnorm")
        self.out = Linear(s.value_heads * s.value_dim, s.hidden)
        self.conv = torch.zeros(s.channels, s.kernel)
        self.dt_bias = torch.zeros(s.value_heads)
        self.a_neg = torch.zeros(s.value_heads)  # ssm_a = -exp(A_log)

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.shape.channels, self.shape.kernel) if method == "set_conv" else (self.shape.value_heads,)

    def set_conv(self, name: str, w: torch.Tensor) -> None:
        check_shape(name, tuple(w.shape), self.tensor_shape("set_conv"))
        self.conv = w.float()

    def set_dt_bias(self, name: str, w: torch.Tensor) -> None:
        check_shape(name, tuple(w.shape), self.tensor_shape("set_dt_bias"))
        self.dt_bias = w.float()

    def set_a(self, name: str, w: torch.Tensor) -> None:
        check_shape(name, tuple(w.shape), self.tensor_shape("set_a"))
        self.a_neg = w.float()

    def new_state(self, dtype: torch.dtype | None) -> DeltaState:
        return DeltaState()  # float32 whatever the cache type

    def forward(self, x: torch.Tensor, step: Step, state: DeltaState | None) -> torch.Tensor:
        s = self.shape
        b, t, _ = x.shape
        qkv, z = self.project(x)
        mixed = self.convolve(qkv, state)  # [b, t, channels]
        kd, vd = s.key_heads * s.key_dim, s.value_heads * s.value_dim
        q, k, v = mixed.split([kd, kd, vd], dim=-1)
        q = self.l2norm(q.view(b, t, s.key_heads, s.key_dim)) * s.key_dim ** -0.5
        k = self.l2norm(k.view(b, t, s.key_heads, s.key_dim))
        v = v.view(b, t, s.value_heads, s.value_dim)
        ratio = s.value_heads // s.key_heads
        if ratio > 1:
            q, k = ((z.repeat(1, 1, ratio, 1) if s.tiled else z.repeat_interleave(ratio, dim=2)) for z in (q, k))
        beta, alpha = self.beta_alpha(x)
        g = self.a_neg * F.softplus(alpha + self.dt_bias)  # [b, t, value_heads], <= 0
        start = None if state is None else state.ssm
        o, final = chunked_delta_rule(q, k, v, g, beta.sigmoid(), start)
        if state is not None:
            state.ssm = final
        o = self.norm(o) * F.silu(z.view(b, t, s.value_heads, s.value_dim))
        return self.out(o.reshape(b, t, -1).to(x.dtype))

    def plan_step(self, plan: StepPlan, h: torch.Tensor) -> torch.Tensor:
        """The native step of this layer (tfb.nn.step): what `forward` computes for one token, the state's conv
        inputs and S updated in place."""
        s = self.shape
        kd, vd = s.key_heads * s.key_dim, s.value_heads * s.value_dim
        if s.fused_qkvz or s.fused_ba:  # these layouts come with experts, which the step does not run either
            raise Unplannable("a gated delta-net with fused projections")
        qkv, z = plan.scratch("delta_qkv", s.channels), plan.scratch("delta_z", vd)
        plan.linear(self.qkv, h, qkv)
        plan.linear(self.z, h, z)
        b, a = plan.scratch("delta_b", s.value_heads), plan.scratch("delta_a", s.value_heads)
        plan.linear(self.b, h, b)
        plan.linear(self.a, h, a)
        mixed = plan.scratch("delta_mixed", s.channels)
        plan.conv(qkv, self.conv, plan.state("conv", (s.channels, s.kernel - 1)), mixed, "silu")
        q, k, v = plan.split(mixed, [kd, kd, vd], "delta_mixed")
        plan.l2_norm(q, s.key_heads, s.eps, s.key_dim ** -0.5, q)
        plan.l2_norm(k, s.key_heads, s.eps, 1.0, k)
        o = plan.scratch("delta_o", vd)
        plan.delta_rule(q, k, v, b, a, self.dt_bias, self.a_neg,
                        plan.state("ssm", (s.value_heads, s.key_dim, s.value_dim)), o, key_heads=s.key_heads,
                        key_dim=s.key_dim, tiled=s.tiled)
        normed = self.norm.plan_step(plan, o, "delta_normed", s.value_heads)
        plan.glu("silu", z, normed, normed)
        y = plan.scratch("delta_y", s.hidden)
        plan.linear(self.out, normed, y)
        return y

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[q ; k ; v] (the conv's channels) and z, float32. A fused projection holds per key head its q, k, its
        value heads' v's and their z's: regrouped here into the separate layout."""
        s = self.shape
        if not s.fused_qkvz:
            return self.qkv(x).float(), self.z(x).float()
        b, t, _ = x.shape
        per_key = s.value_heads // s.key_heads * s.value_dim
        q, k, v, z = self.qkvz(x).float().view(b, t, s.key_heads, -1).split(
            [s.key_dim, s.key_dim, per_key, per_key], dim=-1)
        return torch.cat([part.reshape(b, t, -1) for part in (q, k, v)], dim=-1), z.reshape(b, t, -1)

    def beta_alpha(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """b and a per value head ([b, t, value_heads] each). The fused projection holds, per key head, the
        b's of its value heads then their a's."""
        s = self.shape
        if not s.fused_ba:
            return self.b(x).float(), self.a(x).float()
        ba = self.ba(x).float().view(*x.shape[:2], s.key_heads, 2, s.value_heads // s.key_heads)
        return ba[..., 0, :].flatten(2), ba[..., 1, :].flatten(2)

    def l2norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + self.shape.eps)

    def convolve(self, x: torch.Tensor, state: DeltaState | None) -> torch.Tensor:
        """silu of the causal depthwise convolution of x [b, t, channels] over the last `kernel` inputs (those
        before the call from the state, zeros at the start); the state keeps the last kernel - 1 inputs
        [b, channels, kernel - 1]. Computed as `kernel` shifted multiply-adds in the [t, channels] layout, so
        that the outputs come out contiguous for the per-head views after it."""
        s = self.shape
        b, t, _ = x.shape
        keep = s.kernel - 1
        past = state.conv if state is not None and state.conv is not None else x.new_zeros(b, s.channels, keep)
        window = torch.cat((past.transpose(1, 2), x), dim=1)  # [b, keep + t, channels]
        if state is not None:
            state.conv = window[:, window.shape[1] - keep:].transpose(1, 2).contiguous()
        w = self.conv  # [channels, kernel]
        out = window[:, :t] * w[:, 0]
        for j in range(1, s.kernel):
            out.addcmul_(window[:, j:j + t], w[:, j])
        return F.silu(out, inplace=True)


def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over t positions, CHUNK at a time. q, k: [b, t, h, d_k]; v: [b, t, h, d_v]; g, beta:
    [b, t, h]; state: [b, h, d_k, d_v] or None (zeros). Returns the outputs [b, t, h, d_v] and the final state,
    float32.

    Everything that does not depend on the state entering a chunk is computed for all chunks at once: with
    T = (I + A)^-1, the chunk's updates are U = T beta V - (T beta exp(G) K) S_0, so only the state's recurrence
    over the chunks is a loop. The positions are padded to whole chunks with g = beta = 0 and zero vectors,
    which leave the state as it is."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    c = min(CHUNK, t)
    n = -(-t // c)
    pad = n * c - t
    q, k, v = (F.pad(z.float(), (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(b, h, n, c, -1) for z in (q, k, v))
    g, beta = (F.pad(z.float(), (0, 0, 0, pad)).transpose(1, 2).reshape(b, h, n, c) for z in (g, beta))
    G = g.cumsum(-1)  # [b, h, n, c]: cumulative decay within each chunk
    lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = G[..., :, None] - G[..., None, :]
    D = torch.exp(diff.masked_fill(~lower | (diff < UNDERFLOW), -torch.inf))  # D_ij, 0 above
    decay = G.masked_fill(G < UNDERFLOW, -torch.inf).exp()[..., None]  # exp(G_i)
    A = (beta[..., None] * D * (k @ k.transpose(-1, -2))).tril(-1)
    eye = torch.eye(c, dtype=q.dtype, device=q.device)
    rhs = torch.cat((beta[..., None] * v, beta[..., None] * decay * k), dim=-1)
    W, Y = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)
    inner = D * (q @ k.transpose(-1, -2))  # [b, h, n, c, c]
    q_decayed = decay * q
    last = D[..., -1, :, None]  # D_Cj: from each position to the chunk's end
    k_last = (k * last).transpose(-1, -2)  # [b, h, n, d_k, c]
    chunk_decay = decay[..., -1, :, None]  # [b, h, n, 1, 1]
    S = state.float().clone() if state is not None else q.new_zeros(b, h, dk, dv)
    out = q.new_empty(b, h, n, c, dv)
    for i in range(n):
        U = W[:, :, i] - Y[:, :, i] @ S
        out[:, :, i] = q_decayed[:, :, i] @ S + inner[:, :, i] @ U
        S = chunk_decay[:, :, i] * S + k_last[:, :, i] @ U
    return out.reshape(b, h, n * c, dv)[:, :, :t].transpose(1, 2), S
