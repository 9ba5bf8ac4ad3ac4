"""Causal self-attention: separate or fused projections, GQA, Q/K norm, rope, sliding window,
soft-capping, sinks and a position-dependent query temperature, with an optional KV cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfb.nn.linear import Linear, check_shape
from tfb.nn.norm import Norm
from tfb.nn.rotary import Rotary
from tfb.quant import native


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


class KVCache:
    """Keys and values of the positions seen so far, per layer, in `dtype` (default: as they come);
    capacity grows geometrically."""

    def __init__(self, n_layers: int, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0  # positions stored (committed after a full forward pass)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([batch, kv_heads, new, dim]) after the committed positions; return all of them."""
        start, new = self.length, k.shape[2]
        end = start + new
        for store, x in ((self.keys, k), (self.values, v)):
            buf = store[layer]
            if buf is None or buf.shape[2] < end:
                grown = x.new_empty(*x.shape[:2], max(end, 2 * (0 if buf is None else buf.shape[2]), 16),
                                    x.shape[3], dtype=self.dtype or x.dtype)
                if buf is not None:
                    grown[:, :, :start] = buf[:, :, :start]
                store[layer] = buf = grown
            buf[:, :, start:end] = x
        k_all, v_all = self.keys[layer], self.values[layer]
        assert k_all is not None and v_all is not None
        return k_all[:, :, :end], v_all[:, :, :end]

    def commit(self, new: int) -> None:
        self.length += new

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (for a rewound or shared prompt)."""
        self.length = min(self.length, length)


class Attention(nn.Module):
    def __init__(self, shape: AttentionShape, opts: AttentionOptions, norm_kind: str) -> None:
        super().__init__()
        self.shape, self.opts = shape, opts
        s = shape
        self.q_out, self.k_out, self.v_out = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, \
            s.n_kv_heads * s.value_dim
        if opts.fused_qkv:
            self.qkv = Linear(s.hidden, self.q_out + self.k_out + self.v_out)
        else:
            self.q = Linear(s.hidden, self.q_out)
            self.k = Linear(s.hidden, self.k_out)
            self.v = Linear(s.hidden, self.v_out)
        self.o = Linear(s.n_heads * s.value_dim, s.hidden)
        if opts.qk_norm is not None:
            whole = opts.qk_norm_over == "all"
            own = opts.qk_norm_over == "each_head"  # weights [heads, head_dim]
            self.q_norm = Norm(opts.qk_norm, self.q_out if whole else s.head_dim, opts.norm_eps,
                               groups=s.n_heads if own else 0)
            self.k_norm = Norm(opts.qk_norm, self.k_out if whole else s.head_dim, opts.norm_eps,
                               groups=s.n_kv_heads if own else 0)
        self.sinks: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.shape.n_heads,)

    def set_sinks(self, name: str, sinks: torch.Tensor) -> None:
        check_shape(name, tuple(sinks.shape), (self.shape.n_heads,))
        self.sinks = sinks.float()

    def forward(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        s, o = self.shape, self.opts
        b, t, _ = x.shape
        if o.fused_qkv:
            q, k, v = self.qkv(x).split([self.q_out, self.k_out, self.v_out], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if o.clamp:
            q, k, v = (z.clamp(-o.clamp, o.clamp) for z in (q, k, v))
        if o.qk_norm is not None and o.qk_norm_over == "all":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, s.n_heads, s.head_dim)
        k = k.view(b, t, s.n_kv_heads, s.head_dim)
        v = v.view(b, t, s.n_kv_heads, s.value_dim)
        if o.qk_norm is not None and o.qk_norm_over != "all":
            q, k = self.q_norm(q), self.k_norm(k)
        if o.use_rope:
            q, k = rotary.rotate_pair(q, k, cos, sin)
        if o.temperature_scale:
            steps = torch.floor(positions.double() / o.temperature_length)
            temp = (torch.log(steps + 1.0) * o.temperature_scale + 1.0).to(q.dtype)
            q = q * temp[..., None, None]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = self.attend(q, k, v, positions)
        return self.o(out.transpose(1, 2).reshape(b, t, s.n_heads * s.value_dim))

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
        position, so causality lets it see every key, and a window the last `window` of them."""
        o = self.opts
        if o.window:
            k, v = k[:, :, -o.window:], v[:, :, -o.window:]
        return native.attend(q, k, v, o.scale, o.softcap, self.sinks)

    def _allowed(self, positions: torch.Tensor, s: int) -> torch.Tensor | None:
        """Which of the s keys each query may see, [b, 1, t, s]; None where causality says it all: a
        single query (it comes after every key) or a prompt on an empty cache (query i sees keys <= i),
        without a window."""
        t = positions.shape[1]
        if not self.opts.window and (t == 1 or t == s):
            return None
        key_pos = torch.arange(s, device=positions.device)
        q_pos = positions[:, None, :, None]
        allowed = key_pos <= q_pos
        if self.opts.window:
            allowed = allowed & (q_pos - key_pos < self.opts.window)
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
