"""The `dense_and_routed` feed-forward kind: a dense MLP beside routed experts, each with its own norms, on the
un-normed residual stream. The math: tfb/spec/kinds/dense_and_routed.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.ffn.routed import PAIR_TOKENS, Experts
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import check_shape
from tfb.nn.mlp import MLP, activation_of
from tfb.nn.norm import Norm
from tfb.spec.kinds.dense_and_routed import DenseAndRouted

KIND = "dense_and_routed"
TARGETS = {
    "ffn_norm": ("dense_norm", "set_weight"), "ffn_norm_bias": ("dense_norm", "set_bias"),
    "ffn_gate": ("dense.gate", "set_weight"), "ffn_up": ("dense.up", "set_weight"),
    "ffn_down": ("dense.down", "set_weight"), "post_ffw_norm_1": ("dense_post_norm", "set_weight"),
    "pre_ffw_norm_2": ("experts_norm", "set_weight"), "post_ffw_norm_2": ("experts_post_norm", "set_weight"),
    "ffn_gate_inp": ("experts.router", "set_weight"), "ffn_gate_inp_scale": ("", "set_router_scale"),
    "ffn_gate_exps": ("experts.gate", "set_weight"), "ffn_up_exps": ("experts.up", "set_weight"),
    "ffn_gate_up_exps": ("experts.up", "set_weight"), "ffn_down_exps": ("experts.down", "set_weight"),
    "ffn_down_exps_scale": ("", "set_expert_scale"),
}


def build(section: DenseAndRouted, c: ModelConfig, ctx: BuildContext) -> DenseAndExperts:
    act = activation_of(section, c)
    dense = MLP(c.hidden_size, c.intermediate_size, gated=section.gated, fused_gate_up=False, activation=act)
    experts = Experts(c.hidden_size, c.expert_intermediate_size, n_experts=c.expert_count,
                      top_k=c.expert_used_count, gating="softmax", gated=section.gated,
                      fused_gate_up=section.gate_up == "fused", activation=act, normalize=c.expert_weights_norm,
                      scale=c.expert_weights_scale)

    def norm() -> Norm:
        return ctx.norm(c.hidden_size, c.norm_eps)

    return DenseAndExperts(dense, experts, norm(), norm(), norm(), norm(), c.norm_eps)


class DenseAndExperts(nn.Module):
    def __init__(self, dense: MLP, experts: Experts, dense_norm: Norm, dense_post_norm: Norm, experts_norm: Norm,
                 experts_post_norm: Norm, eps: float) -> None:
        super().__init__()
        self.dense, self.experts = dense, experts
        self.dense_norm, self.dense_post_norm = dense_norm, dense_post_norm
        self.experts_norm, self.experts_post_norm = experts_norm, experts_post_norm
        self.eps = eps
        self.hidden, self.n_experts = experts.router.in_features, experts.n_experts
        self.router_scale: torch.Tensor | None = None
        self.expert_scale: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.hidden,) if method == "set_router_scale" else (self.n_experts,)

    def set_router_scale(self, name: str, scale: torch.Tensor) -> None:
        check_shape(name, tuple(scale.shape), (self.hidden,))
        self.router_scale = scale.float()

    def set_expert_scale(self, name: str, scale: torch.Tensor) -> None:
        check_shape(name, tuple(scale.shape), (self.n_experts,))
        self.expert_scale = scale.float()

    def forward(self, x: torch.Tensor, step: object = None) -> torch.Tensor:
        dense = self.dense_post_norm(self.dense(self.dense_norm(x)))
        flat = x.reshape(-1, x.shape[-1])
        assert self.router_scale is not None, "router scale not loaded"
        routed_on = F.rms_norm(flat.float(), (self.hidden,), eps=self.eps) / math.sqrt(self.hidden) * self.router_scale
        chosen, weights = self.experts.route(routed_on.to(flat.dtype))
        if self.expert_scale is not None:
            weights = weights * self.expert_scale[chosen]
        h = self.experts_norm(flat)
        by = self.experts.by_pairs if flat.shape[0] <= PAIR_TOKENS else self.experts.by_expert
        routed = self.experts_post_norm(by(h, chosen, weights).view_as(x))
        return dense + routed
