"""One transformer block: norms, attention and feed-forward around the residual stream."""

from __future__ import annotations

import torch
from torch import nn

from tfb.nn.attention import Attention, KVCache
from tfb.nn.mlp import MLP
from tfb.nn.moe import Experts
from tfb.nn.norm import Norm
from tfb.nn.rotary import Rotary


class Block(nn.Module):
    """sequential: x += attn(n1(x)); x += ffn(n2(x)). parallel: x += attn(n1(x)) + ffn(n1(x)).

    Pre-norms (n1, n2) and post-norms (on each branch output) are present as configured; each branch
    output is multiplied by `residual_scale` before it is added.
    """

    def __init__(self, attn: Attention, ffn: MLP | Experts, *, norm: Norm | None, ffn_norm: Norm | None,
                 post_attn_norm: Norm | None, post_ffn_norm: Norm | None, parallel: bool,
                 residual_scale: float) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn
        self.attn_norm, self.ffn_norm = norm, ffn_norm
        self.post_attention_norm, self.post_ffw_norm = post_attn_norm, post_ffn_norm
        self.parallel, self.residual_scale = parallel, residual_scale

    def forward(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        h = self.attn_norm(x) if self.attn_norm is not None else x
        a = self.attn(h, rotary, cos, sin, positions, cache, layer)
        if self.post_attention_norm is not None:
            a = self.post_attention_norm(a)
        if self.parallel:
            return x + self._scaled(a + self.ffn(h))
        x = x + self._scaled(a)
        h = self.ffn_norm(x) if self.ffn_norm is not None else x
        f = self.ffn(h)
        if self.post_ffw_norm is not None:
            f = self.post_ffw_norm(f)
        return x + self._scaled(f)

    def _scaled(self, branch: torch.Tensor) -> torch.Tensor:
        return branch if self.residual_scale == 1.0 else branch * self.residual_scale
