"""The `attention` mixer kind: causal self-attention with separate or fused projections, GQA, Q/K norm
(before or after rope), rope, sliding window, chunks, soft-capping, sinks and a position-dependent query
temperature; its layer state is the keys and values of the positions seen so far. The math:
tfb/spec/kinds/attention.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.errors import ConfigError
from tfb.nn.cache import RowStates, SequenceState, Step
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import Linear, check_shape
from tfb.nn.rotary import RopeParams, Rotary
from tfb.nn.step import StepPlan, Unplannable
from tfb.quant import native
from tfb.spec.base import selects
from tfb.spec.kinds.attention import Attention as Section

KIND = "attention"
TARGETS = {
    "attn_q": ("q", "set_weight"), "attn_q_bias": ("q", "set_bias"),
    "attn_k": ("k", "set_weight"), "attn_k_bias": ("k", "set_bias"),
    "attn_v": ("v", "set_weight"), "attn_v_bias": ("v", "set_bias"),
    "attn_qkv": ("qkv", "set_weight"), "attn_qkv_bias": ("qkv", "set_bias"),
    "attn_output": ("o", "set_weight"), "attn_output_bias": ("o", "set_bias"),
    "attn_q_norm": ("q_norm", "set_weight"), "attn_q_norm_bias": ("q_norm", "set_bias"),
    "attn_k_norm": ("k_norm", "set_weight"), "attn_k_norm_bias": ("k_norm", "set_bias"),
    "attn_sinks": ("", "set_sinks"),
}


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> Attention:
    window = c.sliding_window if selects(section.sliding_window, ctx.layer, c.value) else 0
    c = section.sized(c, window > 0)
    shape = AttentionShape(c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim, c.value_dim)
    use_rope = selects(section.rope.layers, ctx.layer, c.value)
    norm = section.qk_norm
    with_norm = norm is not None and c.qk_norm and c.use_qk_norm != 0 and (norm.layers == "all" or use_rope)
    warm = c.attn_temperature_scale > 0 and (section.temperature == "all" or not use_rope)
    opts = AttentionOptions(
        fused_qkv=c.fused_qkv,
        qk_norm=norm.kind if norm is not None and with_norm else None,
        qk_norm_over=norm.over if norm else "head",
        norm_eps=c.norm_eps,
        scale=c.attention_scale,
        softcap=c.attn_softcap,
        clamp=c.clamp_qkv,
        window=window,
        use_rope=use_rope,
        sinks=section.sinks,
        temperature_scale=c.attn_temperature_scale if warm else 0.0,
        temperature_length=c.attn_temperature_length,
        temperature_offset=c.attn_temperature_offset,
        chunk=c.attention_chunk_size if selects(section.chunked, ctx.layer, c.value) else 0,
        qk_norm_after_rope=norm is not None and norm.after_rope,
        output_gate=section.output_gate == "sigmoid",
        v_norm=section.v_norm == "rms",
        kv_from=getattr(c, section.kv_from) if section.kv_from is not None else None,
        layer=ctx.layer,
    )
    params = RopeParams.from_config(c, section.rope.pairing, sliding=window > 0)
    if window and section.rope.factors == "unwindowed":
        params = dataclasses.replace(params, factors=False)
    return Attention(shape, opts, ctx, ctx.rotary(params))


def link_shared_kv(mixers: list[nn.Module | None]) -> None:
    """Let each layer whose keys and values a later layer reads (kv_from) hand them on, after checking that
    the two layers agree on what those keys and values are."""
    for i, reader in enumerate(mixers):
        if not isinstance(reader, Attention) or reader.opts.kv_from is None:
            continue
        source = reader.opts.kv_from
        giver = mixers[source] if 0 <= source < i else None
        problem = _kv_mismatch(giver, reader)
        if problem:
            raise ConfigError(f"layer {i} reads the keys and values of layer {source} (kv_from), {problem}; check the "
                              "spec's kv_from fields against the file's layers")
        assert isinstance(giver, Attention)
        giver.gives_kv = True


def _kv_mismatch(giver: nn.Module | None, reader: Attention) -> str | None:
    if not isinstance(giver, Attention) or giver.opts.kv_from is not None:
        return "which is not an earlier attention layer with keys and values of its own"
    g, r = giver.shape, reader.shape
    if (g.n_kv_heads, g.head_dim, g.value_dim) != (r.n_kv_heads, r.head_dim, r.value_dim):
        return (f"whose KV heads x head width x value width {g.n_kv_heads} x {g.head_dim} x {g.value_dim} differ "
                f"from its own {r.n_kv_heads} x {r.head_dim} x {r.value_dim}")
    if giver.opts.window != reader.opts.window:
        return f"whose window ({giver.opts.window}) differs from its own ({reader.opts.window})"
    return None


@dataclass(frozen=True)
class AttentionShape:
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    value_dim: int


@dataclass(frozen=True)
class AttentionOptions:
    fused_qkv: bool
    qk_norm: str | None  # None, or the norm kind
    qk_norm_over: str  # "head", "each_head" or "all"
    norm_eps: float
    scale: float
    softcap: float
    clamp: float
    window: int  # 0: full causal attention
    use_rope: bool
    sinks: bool
    temperature_scale: float
    temperature_length: int
    temperature_offset: float = 0.0  # q *= 1 + scale * log(floor((pos + offset) / length) + 1)
    chunk: int = 0  # 0: no chunks; else a query sees only the keys of its own chunk of `chunk` positions
    qk_norm_after_rope: bool = False
    output_gate: bool = False  # the Q projection also gives a sigmoid gate per head (after each head's queries)
    v_norm: bool = False  # values divided by their RMS per head (no weights)
    kv_from: int | None = None  # the layer whose keys and values this one reads (it computes none)
    layer: int = 0


class Attention(nn.Module):
    takes_rows = True  # the projections run once for rows that are separate sequences (RowStates)

    def __init__(self, shape: AttentionShape, opts: AttentionOptions, ctx: BuildContext, rotary: Rotary) -> None:
        super().__init__()
        self.shape, self.opts, self.rotary = shape, opts, rotary
        s = shape
        self.q_out, self.k_out, self.v_out = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, \
            s.n_kv_heads * s.value_dim
        q_proj = self.q_out * (2 if opts.output_gate else 1)
        self.gives_kv = False  # a later layer reads this one's keys and values (link_shared_kv)
        if opts.kv_from is not None:
            self.q = Linear(s.hidden, q_proj)
        elif opts.fused_qkv:
            self.qkv = Linear(s.hidden, q_proj + self.k_out + self.v_out)
        else:
            self.q = Linear(s.hidden, q_proj)
            self.k = Linear(s.hidden, self.k_out)
            self.v = Linear(s.hidden, self.v_out)
        self.o = Linear(s.n_heads * s.value_dim, s.hidden)
        if opts.qk_norm is not None:
            whole = opts.qk_norm_over == "all"
            own = opts.qk_norm_over == "each_head"  # weights [heads, head_dim]
            self.q_norm = ctx.norm(self.q_out if whole else s.head_dim, opts.norm_eps, opts.qk_norm,
                                   groups=s.n_heads if own else 0)
            if opts.kv_from is None:
                self.k_norm = ctx.norm(self.k_out if whole else s.head_dim, opts.norm_eps, opts.qk_norm,
                                       groups=s.n_kv_heads if own else 0)
        self.sinks: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.shape.n_heads,)

    def set_sinks(self, name: str, sinks: torch.Tensor) -> None:
        check_shape(name, tuple(sinks.shape), (self.shape.n_heads,))
        self.sinks = sinks.float()

    def new_state(self, dtype: torch.dtype | None) -> SequenceState | None:
        return SequenceState(2, dtype) if self.opts.kv_from is None else None  # a reader keeps nothing

    def forward(self, x: torch.Tensor, step: Step, state: SequenceState | RowStates | None) -> torch.Tensor:
        if self.opts.kv_from is not None:
            return self._forward_shared(x, step)
        s, o = self.shape, self.opts
        positions = step.positions
        b, t, _ = x.shape
        if o.fused_qkv:
            q_proj = self.q_out * (2 if o.output_gate else 1)
            q, k, v = self.qkv(x).split([q_proj, self.k_out, self.v_out], dim=-1)
        else:
            q, k = self.q(x), self.k(x)
            v = k if self.v.weight is None and self.v.packed is None else self.v(x)  # v_proj: optional
        gate = None
        if o.output_gate:  # per head: head_dim queries, then head_dim gate values
            q, gate = q.view(b, t, s.n_heads, 2, s.head_dim).unbind(3)
            q, gate = q.reshape(b, t, self.q_out), gate.reshape(b, t, self.q_out)
        if o.clamp:
            q, k, v = (z.clamp(-o.clamp, o.clamp) for z in (q, k, v))
        before = o.qk_norm is not None and not o.qk_norm_after_rope
        if before and o.qk_norm_over == "all":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, s.n_heads, s.head_dim)
        k = k.view(b, t, s.n_kv_heads, s.head_dim)
        v = v.view(b, t, s.n_kv_heads, s.value_dim)
        if before and o.qk_norm_over != "all":
            q, k = self.q_norm(q), self.k_norm(k)
        if o.v_norm:
            v = F.rms_norm(v.float(), (s.value_dim,), eps=o.norm_eps).to(v.dtype)
        if o.use_rope:
            q, k = self.rotary.rotate_pair(q, k, *step.angles(self.rotary))
        if o.temperature_scale:
            steps = torch.floor((positions.double() + o.temperature_offset) / o.temperature_length)
            temp = (torch.log(steps + 1.0) * o.temperature_scale + 1.0).to(q.dtype)
            q = q * temp[..., None, None]
        if o.qk_norm is not None and o.qk_norm_after_rope:
            q, k = self._norm_after_rope(q, k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if isinstance(state, RowStates):  # separate sequences: the projections above were shared
            out = torch.cat([self._attend_row(q[i:i + 1], k[i:i + 1], v[i:i + 1], step.row(i), row)
                             for i, row in enumerate(state.rows)])
        else:
            if state is not None:
                k, v = state.update(step.start, k, v)
            if self.gives_kv:
                step.kv[o.layer] = (k, v)
            out = self.attend(q, k, v, positions)
        out = out.transpose(1, 2).reshape(b, t, s.n_heads * s.value_dim)
        if gate is not None:
            out = out * torch.sigmoid(gate).to(out.dtype)
        return self.o(out)

    def plan_step(self, plan: StepPlan, h: torch.Tensor) -> torch.Tensor:
        """The native step of this layer: projections, Q/K norms, rope, the new keys and values stored in the
        cache, attention over it, output projection (what `forward` computes for one token)."""
        s, o = self.shape, self.opts
        if o.kv_from is not None or self.gives_kv or o.clamp or o.temperature_scale or o.v_norm:
            raise Unplannable("attention with shared keys and values, clamping, a query temperature or a value "
                              "norm")
        q_proj = self.q_out * (2 if o.output_gate else 1)
        if o.fused_qkv:
            qkv = plan.scratch("qkv", q_proj + self.k_out + self.v_out)
            plan.linear(self.qkv, h, qkv)
            q, k, v = plan.split(qkv, [q_proj, self.k_out, self.v_out], "qkv")
        else:
            if self.v.weight is None and self.v.packed is None:
                raise Unplannable("attention whose keys are its values")
            q, k, v = plan.scratch("q", q_proj), plan.scratch("k", self.k_out), plan.scratch("v", self.v_out)
            for layer, out in ((self.q, q), (self.k, k), (self.v, v)):
                plan.linear(layer, h, out)
        gate = None
        if o.output_gate:  # per head: head_dim queries, then head_dim gate values
            both = q
            q, gate = plan.scratch("q_heads", self.q_out), plan.scratch("gate", self.q_out)
            plan.gather(both, q, s.n_heads, s.head_dim, 2 * s.head_dim, 0)
            plan.gather(both, gate, s.n_heads, s.head_dim, 2 * s.head_dim, s.head_dim)
        if o.qk_norm is not None and not o.qk_norm_after_rope:
            q, k = self._plan_qk_norm(plan, q, k)
        if o.use_rope:
            plan.rope(self.rotary, q, s.n_heads, s.head_dim)
            plan.rope(self.rotary, k, s.n_kv_heads, s.head_dim)
        if o.qk_norm is not None and o.qk_norm_after_rope:
            q, k = self._plan_qk_norm(plan, q, k)
        slot = plan.kv_slot(s.n_kv_heads, s.head_dim, s.value_dim)
        plan.store(slot, k, s.n_kv_heads, s.head_dim)
        plan.store(slot + 2, v, s.n_kv_heads, s.value_dim)
        out = plan.scratch("attention", s.n_heads * s.value_dim)
        plan.attend(q, slot, out, kv_heads=s.n_kv_heads, group=s.n_heads // s.n_kv_heads, key_dim=s.head_dim,
                    value_dim=s.value_dim, scale=o.scale, softcap=o.softcap, sinks=self.sinks, window=o.window,
                    chunk=o.chunk)
        if gate is not None:
            plan.glu("sigmoid", gate, out, out)
        y = plan.scratch("attention_out", s.hidden)
        plan.linear(self.o, out, y)
        return y

    def _plan_qk_norm(self, plan: StepPlan, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        whole = self.opts.qk_norm_over == "all"
        s = self.shape
        return (self.q_norm.plan_step(plan, q, "q_normed", 1 if whole else s.n_heads),
                self.k_norm.plan_step(plan, k, "k_normed", 1 if whole else s.n_kv_heads))

    def _attend_row(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Step,
                    state: SequenceState) -> torch.Tensor:
        keys, values = state.update(step.start, k, v)
        if self.gives_kv:
            step.kv[self.opts.layer] = (keys, values)
        return self.attend(q, keys, values, step.positions)

    def _forward_shared(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """Queries only, against the keys and values an earlier layer computed in this call (kv_from); in a
        step over separate sequences each row reads its own row's."""
        s, o = self.shape, self.opts
        b, t, _ = x.shape
        q = self.q(x)
        if o.qk_norm is not None and o.qk_norm_over == "all":
            q = self.q_norm(q)
        q = q.view(b, t, s.n_heads, s.head_dim)
        if o.qk_norm is not None and o.qk_norm_over != "all":
            q = self.q_norm(q)
        if o.use_rope:
            q = self.rotary.rotate(q, *step.angles(self.rotary))
        q = q.transpose(1, 2)
        if step.starts is not None:
            out = torch.cat([self._attend_shared(q[i:i + 1], step.row(i)) for i in range(b)])
        else:
            out = self._attend_shared(q, step)
        return self.o(out.transpose(1, 2).reshape(b, t, s.n_heads * s.value_dim))

    def _attend_shared(self, q: torch.Tensor, step: Step) -> torch.Tensor:
        k, v = step.kv[self.opts.kv_from]  # type: ignore[index]
        return self.attend(q, k, v, step.positions)

    def _norm_after_rope(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Q/K norm on rotated q and k ([b, t, heads, d]); over the whole projection it sees each
        position's heads as one vector."""
        if self.opts.qk_norm_over != "all":
            return self.q_norm(q), self.k_norm(k)
        return self.q_norm(q.flatten(2)).view_as(q), self.k_norm(k.flatten(2)).view_as(k)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """q: [b, heads, t, d]; k, v: [b, kv_heads, s, d]; positions: [b, t] of the queries."""
        b, heads, t, _ = q.shape
        groups = heads // k.shape[1]
        if t == 1:
            # A decode step: the query heads that share a KV head become rows of one query
            # ([b, kv_heads, groups, d]) rather than the keys being repeated per head, so that nothing
            # that grows with the context is copied.
            q = q.reshape(b, k.shape[1], groups, q.shape[-1])
            out = self._attend_native(q, k, v)
            if out is not None:
                return out.reshape(b, heads, t, v.shape[-1])
        if k.dtype != q.dtype:  # a KV cache of another type
            k, v = k.to(q.dtype), v.to(q.dtype)
        if groups > 1 and t > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        allowed = self._allowed(positions, k.shape[2])
        if not self.opts.softcap and self.sinks is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.opts.scale,
                                                 is_causal=allowed is None and t > 1)
        else:
            out = self._attend_explicit(q, k, v, allowed, t)
        return out.reshape(b, heads, t, v.shape[-1])

    def _attend_native(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """A single query by the native kernel (None where it cannot serve): the query is the newest
        position, so causality lets it see every key, a window the last `window` of them, and a chunk
        those from the start of its chunk on."""
        o = self.opts
        first = 0
        if o.window:
            first = max(first, k.shape[2] - o.window)
        if o.chunk:
            first = max(first, (k.shape[2] - 1) // o.chunk * o.chunk)
        if first:
            k, v = k[:, :, first:], v[:, :, first:]
        return native.attend(q, k, v, o.scale, o.softcap, self.sinks)

    def _allowed(self, positions: torch.Tensor, s: int) -> torch.Tensor | None:
        """Which of the s keys each query may see, [b, 1, t, s]; None where causality says it all: a
        single query (it comes after every key) or a prompt on an empty cache (query i sees keys <= i),
        without a window or chunks."""
        o = self.opts
        t = positions.shape[1]
        if not o.window and not o.chunk and (t == 1 or t == s):
            return None
        key_pos = torch.arange(s, device=positions.device)
        q_pos = positions[:, None, :, None]
        allowed = key_pos <= q_pos
        if o.window:
            allowed = allowed & (q_pos - key_pos < o.window)
        if o.chunk:
            allowed = allowed & (torch.div(key_pos, o.chunk, rounding_mode="floor")
                                 == torch.div(q_pos, o.chunk, rounding_mode="floor"))
        return allowed

    def _attend_explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                         t: int) -> torch.Tensor:
        """Attention with soft-capped scores and/or sinks, which SDPA does not do."""
        o = self.opts
        scores = (q @ k.transpose(-1, -2)).float() * o.scale
        if o.softcap:
            scores = torch.tanh(scores / o.softcap) * o.softcap
        if allowed is None and t > 1:
            allowed = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        if allowed is not None:
            scores = scores.masked_fill(~allowed, -math.inf)
        if self.sinks is not None:
            sink = self.sinks.view(1, scores.shape[1], -1, 1).expand(*scores.shape[:3], 1)
            probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
        else:
            probs = torch.softmax(scores, dim=-1)
        return probs.to(v.dtype) @ v
