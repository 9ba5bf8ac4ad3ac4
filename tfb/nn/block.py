"""One block: norms, a mixer and a feed-forward around the residual stream (the mixer and the
feed-forward are modules of any kind: tfb.nn.kinds)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tfb.nn.cache import RowStates, Step
from tfb.nn.norm import Norm
from tfb.nn.per_layer import OutputScale, PerLayerInput
from tfb.nn.step import StepPlan, Unplannable


class Block(nn.Module):
    """sequential: x += mixer(n1(x)); x += ffn(n2(x)). parallel: x += mixer(n1(x)) + ffn(n1(x)). Without a
    feed-forward (ffn None): x += mixer(n1(x)). Without a mixer (mixer None): x += ffn(n1(x)).

    Pre-norms (n1, n2) and post-norms (on each branch output) are present as configured; each branch
    output is multiplied by `residual_scale` before it is added. Then, where configured, the layer's
    per-layer input is added and the output scaled (tfb.nn.per_layer). Rows that are separate sequences
    (RowStates) go through a mixer one at a time unless it says it `takes_rows`.
    """

    def __init__(self, mixer: nn.Module | None, ffn: nn.Module | None, *, norm: Norm | None, ffn_norm: Norm | None,
                 post_attn_norm: Norm | None, post_ffn_norm: Norm | None, parallel: bool,
                 residual_scale: float, per_layer: PerLayerInput | None = None,
                 output_scale: OutputScale | None = None) -> None:
        super().__init__()
        self.mixer, self.ffn = mixer, ffn
        self.attn_norm, self.ffn_norm = norm, ffn_norm
        self.post_attention_norm, self.post_ffw_norm = post_attn_norm, post_ffn_norm
        self.parallel, self.residual_scale = parallel, residual_scale
        self.per_layer, self.layer_output_scale = per_layer, output_scale

    def forward(self, x: torch.Tensor, step: Step, state: Any) -> torch.Tensor:
        x = self._branches(x, step, state)
        if self.per_layer is not None:
            x = self.per_layer(x, step.layer_inputs)
        return x if self.layer_output_scale is None else self.layer_output_scale(x)

    def _branches(self, x: torch.Tensor, step: Step, state: Any) -> torch.Tensor:
        h = self.attn_norm(x) if self.attn_norm is not None else x
        if self.mixer is None:  # a block without a mixer (the `none` kind): its first norm feeds the ffn
            return x if self.ffn is None else x + self._scaled(self._ffn(h, step))
        if isinstance(state, RowStates) and not getattr(self.mixer, "takes_rows", False):
            a = torch.cat([self.mixer(h[i:i + 1], step.row(i), row) for i, row in enumerate(state.rows)])
        else:
            a = self.mixer(h, step, state)
        if self.post_attention_norm is not None:
            a = self.post_attention_norm(a)
        if self.ffn is None:  # a block without a feed-forward (the `none` kind)
            return x + self._scaled(a)
        if self.parallel:
            return x + self._scaled(a + self.ffn(h, step))
        x = x + self._scaled(a)
        h = self.ffn_norm(x) if self.ffn_norm is not None else x
        return x + self._scaled(self._ffn(h, step))

    def plan_step(self, plan: StepPlan, x: torch.Tensor) -> None:
        """The native step of this block: what `_branches` computes, as operations on the residual stream x."""
        if self.per_layer is not None or self.layer_output_scale is not None or self.parallel:
            raise Unplannable("per-layer inputs, a layer output scale or parallel branches")
        scale = self.residual_scale
        h = x if self.attn_norm is None else self.attn_norm.plan_step(plan, x, "h")
        if self.mixer is None:
            if self.ffn is not None:
                plan.add(x, self._plan_ffn(plan, h), scale)
            return
        a = plan.module(self.mixer, h)
        if self.post_attention_norm is not None:
            a = self.post_attention_norm.plan_step(plan, a, "post")
        plan.add(x, a, scale)
        if self.ffn is not None:
            h = x if self.ffn_norm is None else self.ffn_norm.plan_step(plan, x, "h")
            plan.add(x, self._plan_ffn(plan, h), scale)

    def _plan_ffn(self, plan: StepPlan, h: torch.Tensor) -> torch.Tensor:
        f = plan.module(self.ffn, h)
        return f if self.post_ffw_norm is None else self.post_ffw_norm.plan_step(plan, f, "post")

    def _ffn(self, h: torch.Tensor, step: Step) -> torch.Tensor:
        assert self.ffn is not None
        f = self.ffn(h, step)
        return f if self.post_ffw_norm is None else self.post_ffw_norm(f)

    def _scaled(self, branch: torch.Tensor) -> torch.Tensor:
        return branch if self.residual_scale == 1.0 else branch * self.residual_scale
