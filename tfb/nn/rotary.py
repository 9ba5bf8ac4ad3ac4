"""Rotary position embedding as GGML computes it (ggml_rope_ext), including YaRN and frequency factors.

Frequencies are theta_i = pos * base^(-2i/dims) / factor_i. Linear scaling multiplies them by
freq_scale; YaRN blends scaled and unscaled frequencies over a ramp between the correction dimensions
and scales cos/sin by mscale. The parameters follow llama.cpp's context setup from the file's metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.linear import check_shape
from tfb.quant import native


@dataclass(frozen=True)
class RopeParams:
    dims: int
    pairing: str  # "adjacent" (GGML normal) or "half" (GGML NEOX)
    base: float
    freq_scale: float
    ext_factor: float
    mscale: float
    beta_fast: float
    beta_slow: float
    original_context: int
    factors: bool = True  # the file's frequency-factor tensor applies to this rope

    @classmethod
    def from_config(cls, c: ModelConfig, pairing: str, sliding: bool = False) -> RopeParams:
        """llama.cpp's rope parameters for the layers with full attention, or for the sliding-window
        layers (which have their own base and scale; the YaRN magnitude stays the full layers')."""
        scaling = c.rope_scaling
        factor = c.rope_scale_factor or 1.0
        freq_scale = 1.0 if scaling == "none" else 1.0 / factor
        ext_factor = 1.0 if scaling == "yarn" else 0.0
        if sliding:
            params = cls.from_config(c, pairing)
            local_scale = 1.0 / (c.rope_scale_factor_swa or 1.0)
            mscale = params.mscale
            if ext_factor:  # GGML's own YaRN magnitude uses this layer's scale; llama.cpp divided out the full one
                mscale *= (1.0 + 0.1 * math.log(1.0 / local_scale)) / (1.0 + 0.1 * math.log(1.0 / freq_scale))
            return dataclasses.replace(params, base=c.rope_base_swa, freq_scale=local_scale, mscale=mscale)
        mscale = 1.0
        if ext_factor:
            # llama.cpp's YaRN magnitude; GGML multiplies by 1 + 0.1*ln(factor) itself and llama.cpp
            # divides that back out, so the net factor is this one
            factor = 1.0 / freq_scale
            mscale = _yarn_mscale(factor, 1.0)
            if c.yarn_log_multiplier:
                mscale /= _yarn_mscale(factor, c.yarn_log_multiplier)
        return cls(c.rope_dims, pairing, c.rope_base, freq_scale, ext_factor, mscale * c.rope_attn_factor,
                   c.yarn_beta_fast, c.yarn_beta_slow, c.rope_original_context)


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_corr_dim(dims: int, original_context: int, rotations: float, base: float) -> float:
    return dims * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))


class Rotary(nn.Module):
    """Computes cos/sin for positions and rotates the leading `dims` dimensions of each head."""

    def __init__(self, params: RopeParams) -> None:
        super().__init__()
        self.params = params
        self.freq_factors: torch.Tensor | None = None  # per-pair frequency divisors, set by the loader

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.params.dims // 2,)

    def set_freq_factors(self, name: str, factors: torch.Tensor) -> None:
        check_shape(name, tuple(factors.shape), (self.params.dims // 2,))
        self.freq_factors = factors.double()

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [..., dims/2] for integer positions of any shape (float32)."""
        p = self.params
        pairs = torch.arange(p.dims // 2, dtype=torch.float64)
        inv_freq = p.base ** (-2.0 * pairs / p.dims)
        if self.freq_factors is not None:
            inv_freq = inv_freq / self.freq_factors
        extrapolated = positions.double().unsqueeze(-1) * inv_freq
        theta = extrapolated * p.freq_scale
        if p.ext_factor:
            low = max(0.0, math.floor(_yarn_corr_dim(p.dims, p.original_context, p.beta_fast, p.base)))
            high = min(p.dims - 1.0, math.ceil(_yarn_corr_dim(p.dims, p.original_context, p.beta_slow, p.base)))
            ramp = 1.0 - ((pairs - low) / max(0.001, high - low)).clamp(0.0, 1.0)
            mix = ramp * p.ext_factor
            theta = theta * (1 - mix) + extrapolated * mix
        return (theta.cos() * p.mscale).float(), (theta.sin() * p.mscale).float()

    def rotate_pair(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys ([batch, seq, heads, head_dim] each) rotated alike: by the native kernel, else by
        one torch rotation of both (half the small torch calls of two)."""
        adjacent = self.params.pairing == "adjacent"
        q_rotated = native.rope(q, cos, sin, self.params.dims, adjacent)
        k_rotated = native.rope(k, cos, sin, self.params.dims, adjacent) if q_rotated is not None else None
        if q_rotated is not None and k_rotated is not None:
            return q_rotated, k_rotated
        q, k = self.rotate(torch.cat((q, k), dim=2), cos, sin).split([q.shape[2], k.shape[2]], dim=2)
        return q, k

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [batch, seq, heads, head_dim]; cos/sin: [batch, seq, dims/2]."""
        d = self.params.dims
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        h = x[..., :d].float()
        if self.params.pairing == "adjacent":
            x0, x1 = h[..., 0::2], h[..., 1::2]
            rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        else:
            x0, x1 = h[..., : d // 2], h[..., d // 2:]
            rotated = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        rotated = rotated.to(x.dtype)
        return rotated if d == x.shape[-1] else torch.cat((rotated, x[..., d:]), dim=-1)
