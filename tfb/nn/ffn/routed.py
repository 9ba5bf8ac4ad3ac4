"""The `routed` feed-forward kind: a mixture of experts with stacked expert weights (one [experts, out, in]
tensor per projection), grouped top-k, and optional shared experts. The math: tfb/spec/kinds/routed.py.

Only the chosen experts are computed, in two ways. A few tokens (a decoding step) take one product per
(token, chosen expert) pair, all pairs of a projection in one native call (tfb_matmul_experts): per layer
three calls, whatever k. More tokens (a prompt) are grouped by expert, each expert's tokens in one product.
"""

from __future__ import annotations

import torch
from torch import nn

from tfb.config import ModelConfig
from tfb.nn.kinds import BuildContext
from tfb.nn.linear import Linear, Weight, check_shape, packed_matmul
from tfb.nn.mlp import MLP, Activation, activation_of
from tfb.quant import PackedTensor, native
from tfb.spec.kinds.routed import Routed

KIND = "routed"
PAIR_TOKENS = 4  # up to this many tokens, each (token, expert) pair is its own product: no grouping
TARGETS = {
    "ffn_gate_inp": ("router", "set_weight"), "ffn_gate_inp_bias": ("router", "set_bias"),
    "exp_probs_b": ("", "set_selection_bias"),
    "ffn_gate_exps": ("gate", "set_weight"), "ffn_gate_exps_bias": ("gate", "set_bias"),
    "ffn_up_exps": ("up", "set_weight"), "ffn_up_exps_bias": ("up", "set_bias"),
    "ffn_gate_up_exps": ("up", "set_weight"), "ffn_gate_up_exps_bias": ("up", "set_bias"),
    "ffn_down_exps": ("down", "set_weight"), "ffn_down_exps_bias": ("down", "set_bias"),
    "ffn_gate_shexp": ("shared.gate", "set_weight"), "ffn_gate_shexp_bias": ("shared.gate", "set_bias"),
    "ffn_up_shexp": ("shared.up", "set_weight"), "ffn_up_shexp_bias": ("shared.up", "set_bias"),
    "ffn_down_shexp": ("shared.down", "set_weight"), "ffn_down_shexp_bias": ("shared.down", "set_bias"),
    "ffn_gate_inp_shexp": ("", "set_shared_gate"),
    "ffn_latent_down": ("latent_down", "set_weight"), "ffn_latent_up": ("latent_up", "set_weight"),
}


def build(section: Routed, c: ModelConfig, ctx: BuildContext) -> Experts:
    act = activation_of(section, c)
    shared = None
    if section.shared is not None:
        shared = MLP(c.hidden_size, c.expert_shared_intermediate_size, gated=section.gated, fused_gate_up=False,
                     activation=act)
    return Experts(c.hidden_size, c.expert_intermediate_size, n_experts=c.expert_count, top_k=c.expert_used_count,
                   gating=section.scores(c), gated=section.gated, fused_gate_up=section.gate_up == "fused",
                   activation=act, normalize=c.expert_weights_norm, scale=c.expert_weights_scale,
                   groups=(c.expert_group_count, c.expert_group_used_count),
                   weights_on_input=section.weights == "input",
                   shared=shared, shared_gated=section.shared is not None and section.shared.gate == "sigmoid",
                   latent=c.expert_latent_size if section.latent != "none" else 0)


class ExpertLinear(nn.Module):
    """One projection of every expert: x @ W[e].T + b[e] for a chosen expert e."""

    def __init__(self, n_experts: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.shape = (n_experts, out_features, in_features)
        self.weight: Weight | None = None
        self.bias: torch.Tensor | None = None
        self.prepared: dict[int, native.Prepared | None] = {}  # per expert, made ready for the native kernels
        self.prepared_pairs: native.PreparedExperts | None = None  # all experts, for `pairs`
        self.prepared_pairs_for: Weight | None = None
        self.int8_activations = False  # as Linear's

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return self.shape if method == "set_weight" else self.shape[:2]

    def set_weight(self, name: str, weight: Weight) -> None:
        check_shape(name, tuple(weight.shape), self.shape)
        self.weight = weight
        self.prepared = {}

    def set_bias(self, name: str, bias: torch.Tensor) -> None:
        check_shape(name, tuple(bias.shape), self.shape[:2])
        self.bias = bias

    def use_int8_activations(self, enabled: bool) -> None:
        """Transformer.use_int8_activations, for these experts."""
        self.int8_activations, self.prepared = enabled, {}  # prepared again on next use
        self.prepared_pairs_for = None

    def forward(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        assert self.weight is not None, "expert weights not loaded"
        w = self.weight[expert]
        if isinstance(w, PackedTensor):
            if expert not in self.prepared:
                # the expert's rows: a contiguous slice of the bytes
                self.prepared[expert] = native.prepare(w, self.int8_activations)
            y = packed_matmul(x, w, self.prepared[expert])
        else:
            y = x @ w.T
        return y if self.bias is None else y + self.bias[expert]

    def pairs(self, ids: torch.Tensor, x: torch.Tensor, share: int) -> torch.Tensor:
        """y[p] = x[p // share] @ W[ids[p]].T + b[ids[p]] for P (row, expert) pairs: ids [P] (int64), x
        [P / share, in] -> [P, out]. A decoding step's token and its k experts: share = k."""
        assert self.weight is not None, "expert weights not loaded"
        if self.prepared_pairs_for is not self.weight:
            weight = self.weight
            self.prepared_pairs = native.prepare_experts(weight, self.int8_activations) \
                if isinstance(weight, PackedTensor) else None
            self.prepared_pairs_for = self.weight
        if self.prepared_pairs is None:  # float weights, or a format without fused products
            return torch.cat([self(e, x[p // share, None]) for p, e in enumerate(ids.tolist())])
        y = self.prepared_pairs(ids, x.to(torch.float32).contiguous(), share).to(x.dtype)
        return y if self.bias is None else y + self.bias[ids]


class Experts(nn.Module):
    def __init__(self, hidden: int, inner: int, *, n_experts: int, top_k: int, gating: str, gated: bool,
                 fused_gate_up: bool, activation: Activation, normalize: bool, scale: float,
                 groups: tuple[int, int] = (0, 0), weights_on_input: bool = False, shared: MLP | None = None,
                 shared_gated: bool = False, latent: int = 0) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.gating = n_experts, top_k, gating
        self.gated, self.fused, self.activation = gated, fused_gate_up, activation
        self.normalize, self.scale = normalize, scale
        self.groups, self.groups_used = groups
        self.weights_on_input = weights_on_input
        self.shared = shared
        self.shared_gate: torch.Tensor | None = None
        self.shared_gated = shared_gated
        self.router = Linear(hidden, n_experts)
        self.selection_bias: torch.Tensor | None = None
        # latent experts: projected into a smaller width and back (read when the file has the projections)
        self.latent_down = Linear(hidden, latent) if latent else None
        self.latent_up = Linear(latent, hidden) if latent else None
        width = latent or hidden  # what the experts read and write
        self.up = ExpertLinear(n_experts, width, 2 * inner if fused_gate_up else inner)
        if gated and not fused_gate_up:
            self.gate = ExpertLinear(n_experts, width, inner)
        self.down = ExpertLinear(n_experts, inner, width)

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (self.router.in_features,) if method == "set_shared_gate" else (self.n_experts,)

    def set_shared_gate(self, name: str, weight: torch.Tensor) -> None:
        check_shape(name, tuple(weight.shape), (self.router.in_features,))
        self.shared_gate = weight

    def set_selection_bias(self, name: str, bias: torch.Tensor) -> None:
        check_shape(name, tuple(bias.shape), (self.n_experts,))
        self.selection_bias = bias.float()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts [tokens, k] and their weights [tokens, k] (float32)."""
        logits = self.router(x).float()
        if self.gating == "softmax":
            probs = torch.softmax(logits, dim=-1)
        elif self.gating == "sigmoid":
            probs = torch.sigmoid(logits)
        else:
            probs = logits
        select = probs if self.selection_bias is None else probs + self.selection_bias
        if self.groups > 1:
            select = self._best_groups(select)
        chosen = select.topk(self.top_k, dim=-1).indices
        weights = probs.gather(-1, chosen)
        if self.gating == "softmax_selected":
            weights = torch.softmax(weights, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=6.103515625e-5)
        if self.scale not in (0.0, 1.0):
            weights = weights * self.scale
        return chosen, weights

    def _best_groups(self, select: torch.Tensor) -> torch.Tensor:
        """`select` with the experts outside each token's best groups at -inf; a group scores the sum of
        its two best experts (as llama.cpp, whatever the gating)."""
        grouped = select.view(select.shape[0], self.groups, -1)
        scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
        best = scores.topk(self.groups_used, dim=-1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep[..., None], -torch.inf).view_as(select)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down(e, self.activation(self.up(e, x)))
        if self.fused:
            gate, up = self.up(e, x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(e, x), self.up(e, x)
        return self.down(e, self.activation.gated(gate, up))

    def by_pairs(self, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The experts' sum for a few tokens: each (token, expert) pair its own product, a projection's
        pairs in one call."""
        tokens, k = chosen.shape
        ids = chosen.reshape(-1).to(torch.int64).contiguous()
        w = weights.reshape(-1, 1).to(flat.dtype)
        x, share = (flat.repeat_interleave(k, dim=0) * w, 1) if self.weights_on_input else (flat, k)
        if not self.gated:
            h = self.activation(self.up.pairs(ids, x, share))
        elif self.fused:
            gate, up = self.up.pairs(ids, x, share).chunk(2, dim=-1)
            h = self.activation.gated(gate, up)
        else:
            h = self.activation.gated(self.gate.pairs(ids, x, share), self.up.pairs(ids, x, share))
        y = self.down.pairs(ids, h, 1)
        if not self.weights_on_input:
            y = y * w
        return y.view(tokens, k, -1).sum(dim=1)

    def by_expert(self, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The experts' sum for many tokens: each chosen expert's tokens gathered into one product."""
        out = torch.zeros_like(flat)
        for e in chosen.unique().tolist():
            token, slot = (chosen == e).nonzero(as_tuple=True)
            w = weights[token, slot, None].to(flat.dtype)
            y = self.expert(e, flat[token] * w) if self.weights_on_input else self.expert(e, flat[token]) * w
            out.index_add_(0, token, y)
        return out

    def forward(self, x: torch.Tensor, step: object = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        chosen, weights = self.route(flat)
        by = self.by_pairs if flat.shape[0] <= PAIR_TOKENS else self.by_expert
        down, up = self.latent_down, self.latent_up
        if down is not None and up is not None and _loaded(down) and _loaded(up):
            out = up(by(down(flat), chosen, weights))
        else:
            out = by(flat, chosen, weights)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gated:
                assert self.shared_gate is not None, "shared expert gate not loaded"
                shared = shared * torch.sigmoid(flat.float() @ self.shared_gate.float())[:, None].to(flat.dtype)
            out = out + shared
        return out.view_as(x)


def _loaded(linear: Linear) -> bool:
    return linear.weight is not None or linear.packed is not None
