"""The `latent_attention` mixer kind (multi-head latent attention) in the absorbed form: queries are taken into
the latent space by attn_k_b, scored against the cached latents, and the latent-weighted sum is taken out by
attn_v_b. Its layer state is one tensor per position, [latent ; rope part] (kv_lora_rank + rope_dims values,
shared by every head): keys are the whole of it, values its latent part. The math: tfb/spec/kinds/latent_attention.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.cache import SequenceState, Step
from tfb.nn.ffn.routed import ExpertLinear
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import Linear
from tfb.nn.rotary import RopeParams, Rotary
from tfb.quant import native
from tfb.spec.kinds.latent_attention import LatentAttention as Section

KIND = "latent_attention"
TARGETS = {
    "attn_q": ("q", "set_weight"),
    "attn_q_a": ("q_a", "set_weight"), "attn_q_a_norm": ("q_a_norm", "set_weight"), "attn_q_b": ("q_b", "set_weight"),
    "attn_kv_a_mqa": ("kv_a", "set_weight"), "attn_kv_a_norm": ("kv_a_norm", "set_weight"),
    "attn_k_b": ("k_b", "set_weight"), "attn_v_b": ("v_b", "set_weight"),
    "attn_output": ("o", "set_weight"),
}


@dataclass(frozen=True)
class LatentShape:
    hidden: int
    n_heads: int
    nope: int  # query/key dimensions without rope
    rope: int  # the rope part: rotated, its key shared by all heads
    value: int  # one head's value width after attn_v_b
    latent: int  # kv_lora_rank
    q_rank: int  # q_lora_rank; 0: one query projection


def build(section: Section, c: ModelConfig, ctx: BuildContext) -> LatentAttentionLayer:
    rank = c.q_lora_rank if section.query == "low_rank" else 0
    shape = LatentShape(c.hidden_size, c.n_heads, c.head_dim - c.rope_dims, c.rope_dims, c.value_dim, c.kv_lora_rank,
                        rank)
    params, magnitude = rope_and_magnitude(c, section.rope.pairing)
    temperature = (c.attn_temperature_scale, c.attn_temperature_length, c.attn_temperature_offset)
    return LatentAttentionLayer(shape, ctx, ctx.rotary(params), c.attention_scale * magnitude ** 2, c.norm_eps,
                                temperature)


def rope_and_magnitude(c: ModelConfig, pairing: str) -> tuple[RopeParams, float]:
    """llama.cpp's rope for latent attention and the magnitude m whose square multiplies the scores.

    With YaRN and the file's yarn_log_multiplier (mscale_all_dim), rope's cos and sin keep magnitude 1 (times
    rope_attn_factor) and m = 1 + 0.1 · yarn_log_multiplier · ln(factor); without the multiplier, rope keeps
    YaRN's own magnitude 1 + 0.1 ln(factor) and m is that too. Other scalings: rope unscaled, m = 1 + 0.1 ln(factor).
    (llama.cpp: the context's yarn_attn_factor, then the graph's attn_factor_org and kq_scale.)
    """
    params = RopeParams.from_config(c, pairing)
    ln_factor = math.log(1.0 / params.freq_scale)
    if params.ext_factor:
        plain = 1.0 if c.yarn_log_multiplier else (1.0 + 0.1 * ln_factor if ln_factor > 0 else 1.0)
        attn_factor = plain / (1.0 + 0.1 * ln_factor) * c.rope_attn_factor
        rope_magnitude = attn_factor * (1.0 + 0.1 * ln_factor)  # GGML's YaRN multiplies by 1 + 0.1 ln(factor)
    else:
        attn_factor = rope_magnitude = c.rope_attn_factor
    magnitude = attn_factor * (1.0 + 0.1 * ln_factor) * (1.0 + 0.1 * c.yarn_log_multiplier * ln_factor)
    return dataclasses.replace(params, mscale=rope_magnitude), magnitude


def per_head(linear: ExpertLinear, x: torch.Tensor) -> torch.Tensor:
    """x [..., heads, in] -> [..., heads, out]: head h through matrix h of a [heads, out, in] weight."""
    w = linear.weight
    if isinstance(w, torch.Tensor) and linear.bias is None:
        return torch.einsum("...hi,hoi->...ho", x, w.to(x.dtype))
    return torch.stack([linear(h, x[..., h, :]) for h in range(x.shape[-2])], dim=-2)


class LatentAttentionLayer(nn.Module):
    def __init__(self, shape: LatentShape, ctx: BuildContext, rotary: Rotary, scale: float, eps: float,
                 temperature: tuple[float, int, float] = (0.0, 1, 0.0)) -> None:
        super().__init__()
        s = shape
        self.shape, self.rotary, self.scale = shape, rotary, scale
        self.temperature = temperature  # (scale, length, offset) of the query temperature; scale 0: none
        q_out = s.n_heads * (s.nope + s.rope)
        if s.q_rank:
            self.q_a = Linear(s.hidden, s.q_rank)
            self.q_a_norm = ctx.norm(s.q_rank, eps)
            self.q_b = Linear(s.q_rank, q_out)
        else:
            self.q = Linear(s.hidden, q_out)
        self.kv_a = Linear(s.hidden, s.latent + s.rope)
        self.kv_a_norm = ctx.norm(s.latent, eps)
        self.k_b = ExpertLinear(s.n_heads, s.nope, s.latent)  # [heads, latent, nope]: q_nope into latent space
        self.v_b = ExpertLinear(s.n_heads, s.latent, s.value)  # [heads, value, latent]: out of latent space
        self.o = Linear(s.n_heads * s.value, s.hidden)

    def new_state(self, dtype: torch.dtype | None) -> SequenceState:
        return SequenceState(1, dtype)  # [latent ; rope part] per position, one "head" for all heads

    def forward(self, x: torch.Tensor, step: Step, state: SequenceState | None) -> torch.Tensor:
        s = self.shape
        b, t, _ = x.shape
        q = self.q_b(self.q_a_norm(self.q_a(x))) if s.q_rank else self.q(x)
        q_nope, q_pe = q.view(b, t, s.n_heads, s.nope + s.rope).split([s.nope, s.rope], dim=-1)
        latent, k_pe = self.kv_a(x).split([s.latent, s.rope], dim=-1)
        latent = self.kv_a_norm(latent)
        q_pe, k_pe = self.rotary.rotate_pair(q_pe.contiguous(), k_pe.reshape(b, t, 1, s.rope),
                                             *step.angles(self.rotary))
        query = torch.cat((per_head(self.k_b, q_nope), q_pe), dim=-1).transpose(1, 2)  # [b, heads, t, latent + rope]
        temp_scale, temp_length, temp_offset = self.temperature
        if temp_scale:  # q *= 1 + s * log(floor((pos + offset) / length) + 1); the cached keys stay unscaled
            steps = torch.floor((step.positions.double() + temp_offset) / temp_length)
            query = query * (torch.log(steps + 1.0) * temp_scale + 1.0).to(query.dtype)[:, None, :, None]
        keys = torch.cat((latent.unsqueeze(2), k_pe), dim=-1).transpose(1, 2)  # [b, 1, t, latent + rope]
        if state is not None:
            (keys,) = state.update(step.start, keys)
        out = self.attend(query, keys, step.positions)  # [b, heads, t, latent]
        out = per_head(self.v_b, out.transpose(1, 2))  # [b, t, heads, value]
        return self.o(out.reshape(b, t, s.n_heads * s.value))

    def attend(self, q: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Multi-query attention of q [b, heads, t, latent + rope] over keys [b, 1, s, latent + rope], the values
        being the keys' latent part; positions [b, t] of the queries. Returns [b, heads, t, latent]."""
        b, heads, t, width = q.shape
        values = keys[..., : self.shape.latent]
        if t == 1:  # a decode step: every cached position is visible, the heads are rows of one query
            out = native.attend(q.reshape(b, 1, heads, width), keys, values, self.scale)
            if out is not None:
                return out.reshape(b, heads, 1, -1)
        if keys.dtype != q.dtype:  # a cache of another type
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        length = keys.shape[2]
        allowed = None
        if t > 1 and t != length:  # a chunk after cached positions: query i sees keys up to its position
            allowed = torch.arange(length, device=q.device) <= positions[:, None, :, None]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=self.scale,
                                              is_causal=allowed is None and t > 1, enable_gqa=True)
