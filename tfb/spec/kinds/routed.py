"""The `routed` feed-forward kind: a router scores the experts, each token goes to the top k, and their
outputs are summed with the routing weights; optionally plus always-on shared experts.

Math, per token x (llama.cpp's build_moe_ffn):
  logits = W_router x (+ router bias)
  probs  = softmax(logits) | sigmoid(logits) | logits (softmax_selected)
           (gating: expert_gating_func: the one that config field numbers, as llama.cpp's files do)
  select = probs + b_sel                     (selection bias: changes which experts, not their weights)
  groups: with G = expert_group_count > 1, each group of E/G experts scores the sum of its two best
          `select` values; only the best expert_group_used_count groups stay candidates
  chosen = top-k of select;  w = probs[chosen]
  w = softmax(w) (softmax_selected); w = w / sum(w) (expert_weights_norm); w = w * expert_weights_scale
  y = sum_e w_e * expert_e(x)      or, weights on the input (top-1 routers): y = sum_e expert_e(w_e * x)
  y += shared(x) * [sigmoid(W_gate_shexp x) when the shared expert is gated]
Latent experts (latent: the file's ffn_latent_down / ffn_latent_up): the experts run in a smaller width L =
expert_latent_size; the router and the shared experts still read x:
  y = W_latent_up · sum_e w_e * expert_e(W_latent_down x)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import ConfigField, Need, Presence, Strict, add_slot
from tfb.spec.kinds._mlp import MLPShape

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts

EXPERT_SLOTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps")
SHARED_SLOTS = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")
GATING_FUNCS = {1: "softmax", 2: "sigmoid", 3: "softmax_selected"}  # llama.cpp's expert_gating_func values


class SharedExperts(Strict):
    """Experts every token uses, one MLP of width `expert_shared_intermediate_size` (the shared experts
    stacked), with the routed experts' activation."""

    gate: Literal["none", "sigmoid"] = Field(
        "none", description="sigmoid: the output is scaled by sigmoid(ffn_gate_inp_shexp . x)")
    bias: Presence = Field("none", description="biases of the shared expert's projections")


class Routed(MLPShape):
    role: ClassVar[str] = "ffn"
    SLOTS: ClassVar[tuple[str, ...]] = (
        "ffn_gate_inp", "ffn_gate_inp_bias", "exp_probs_b", *EXPERT_SLOTS, *(f"{s}_bias" for s in EXPERT_SLOTS),
        *SHARED_SLOTS, *(f"{s}_bias" for s in SHARED_SLOTS), "ffn_gate_inp_shexp", "ffn_latent_down", "ffn_latent_up")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("expert_group_count", "int", "groups of experts for grouped top-k (0 or 1: no groups)", 0,
                    "nonnegative"),
        ConfigField("expert_group_used_count", "int", "groups whose experts may be chosen (grouped top-k)", 0,
                    "nonnegative"),
        ConfigField("expert_shared_intermediate_size", "int", "hidden width of the shared experts together", 0,
                    "nonnegative"),
        ConfigField("leading_dense_block_count", "int", "leading layers with a dense feed-forward", 0,
                    "nonnegative"),
        ConfigField("moe_layer_step", "int", "every n-th layer has experts (interleaved MoE; 0: see spec)", 0,
                    "nonnegative"),
        ConfigField("expert_shared_count", "int", "number of shared experts (a spec may derive their width from it)",
                    0, "nonnegative"),
        ConfigField("expert_latent_size", "int", "width the routed experts run in, between the latent down and up "
                    "projections (`latent:`; 0: the hidden size)", 0, "nonnegative"),
        ConfigField("expert_gating_func", "int", "the scores of `gating: expert_gating_func` in llama.cpp's numbering: "
                    "1 softmax, 2 sigmoid, 3 softmax_selected", 0, "nonnegative"),
    )

    kind: Literal["routed"] = "routed"
    gating: Literal["softmax", "sigmoid", "softmax_selected", "expert_gating_func"] = Field(
        "softmax", description="softmax: over all experts, then top-k; sigmoid: per expert, then top-k; "
        "softmax_selected: top-k of the router logits, then softmax over those k; expert_gating_func: the one "
        "that config field names (the file's key, or the spec's default)")
    router_bias: Presence = Field("none", description="bias of the router projection (ffn_gate_inp)")
    selection_bias: Presence = Field(
        "none", description="bias added to the probabilities for choosing experts only (exp_probs_b)")
    weights: Literal["output", "input"] = Field(
        "output", description="output: each chosen expert's output is multiplied by its weight; input: its "
        "input is (top-1 routers that scale the token before the expert)")
    shared: SharedExperts | None = Field(None, description="always-on shared experts beside the routed ones")
    latent: Presence = Field(
        "none", description="projections into the experts' smaller width and back (ffn_latent_down, ffn_latent_up; "
        "width expert_latent_size) around the routed experts; optional: when the file has them")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {"ffn_gate_inp": "required"}
        add_slot(out, "ffn_gate_inp_bias", self.router_bias)
        add_slot(out, "exp_probs_b", self.selection_bias)
        projections = ["ffn_down_exps"]
        if self.gated and self.gate_up == "fused":
            projections.append("ffn_gate_up_exps")
        else:
            projections += ["ffn_gate_exps", "ffn_up_exps"] if self.gated else ["ffn_up_exps"]
        for slot in projections:
            out[slot] = "required"
            add_slot(out, f"{slot}_bias", self.bias)
        add_slot(out, "ffn_latent_down", self.latent)
        add_slot(out, "ffn_latent_up", self.latent)
        if self.shared is not None:
            for slot in SHARED_SLOTS if self.gated else ("ffn_up_shexp", "ffn_down_shexp"):
                out[slot] = "required"
                add_slot(out, f"{slot}_bias", self.shared.bias)
            if self.shared.gate == "sigmoid":
                out["ffn_gate_inp_shexp"] = "required"
        return out

    def scores(self, c: Any) -> str:
        """The gating of a layer with config `c`: the section's, or the one expert_gating_func names."""
        return GATING_FUNCS.get(c.expert_gating_func, "") if self.gating == "expert_gating_func" else self.gating

    def check(self, c: Any) -> str | None:
        if not self.scores(c):
            return (f"expert_gating_func = {c.expert_gating_func} is not supported (1 softmax, 2 sigmoid, "
                    "3 softmax_selected); give the file's key a supported value or the spec a default")
        if c.expert_count <= 0:
            return "expert_count is 0 in a layer with routed experts"
        if not 0 < c.expert_used_count <= c.expert_count:
            return f"expert_used_count = {c.expert_used_count} must be between 1 and expert_count = {c.expert_count}"
        if c.expert_intermediate_size == 0:
            return "expert_intermediate_size is 0 in a layer with routed experts"
        groups, used = c.expert_group_count, c.expert_group_used_count
        if groups > 1:
            if c.expert_count % groups:
                return f"expert_group_count = {groups} does not divide expert_count = {c.expert_count}"
            if not 0 < used <= groups:
                return f"expert_group_used_count = {used} must be between 1 and expert_group_count = {groups}"
            if c.expert_used_count > used * (c.expert_count // groups):
                return (f"expert_used_count = {c.expert_used_count} is more than the {used} groups of "
                        f"{c.expert_count // groups} experts that may be chosen")
        if self.weights == "input" and c.expert_used_count != 1:
            return f"weights: input needs one expert per token, expert_used_count is {c.expert_used_count}"
        if self.shared is not None and c.expert_shared_intermediate_size == 0:
            return "expert_shared_intermediate_size is 0 but the spec has shared experts"
        return None
