"""The `dense_and_routed` feed-forward kind: a dense MLP and routed experts side by side, each with norms of its
own, on the un-normed residual stream x (the block's ffn_norm is the dense branch's pre-norm here):

  y      = post_1(MLP(ffn_norm(x)))  +  post_2(experts(pre_2(x)))
  router = W_router · (x / rms(x) / sqrt(n) ⊙ s_router)      (rms without weights; n = hidden_size;
                                                              s_router: ffn_gate_inp_scale, one per channel)
  probs  = softmax(router);  chosen = top-k;  w = probs[chosen]
  w      = w / sum(w)                                         (expert_weights_norm)
  w_e    = w_e · s_e                                          (s: ffn_down_exps_scale, one per expert, optional)
  experts(h) = sum_e w_e · expert_e(h)

The block's post-norm (post_ffw_norm), if any, acts on y. The MLP is intermediate_size wide, each expert
expert_intermediate_size; both take the section's `gated` and `activation`, the experts its `gate_up`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import Need, Presence
from tfb.spec.kinds._mlp import MLPShape

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class DenseAndRouted(MLPShape):
    role: ClassVar[str] = "ffn"
    OWN_PRE_NORM: ClassVar[bool] = True
    SLOTS: ClassVar[tuple[str, ...]] = (
        "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm_1", "pre_ffw_norm_2", "post_ffw_norm_2",
        "ffn_gate_inp", "ffn_gate_inp_scale", "ffn_gate_exps", "ffn_up_exps", "ffn_gate_up_exps", "ffn_down_exps",
        "ffn_down_exps_scale")

    kind: Literal["dense_and_routed"] = "dense_and_routed"
    expert_scale: Presence = Field("optional", description="a factor per expert on its routing weight "
                                   "(ffn_down_exps_scale)")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {slot: "required" for slot in (
            "ffn_up", "ffn_down", "post_ffw_norm_1", "pre_ffw_norm_2", "post_ffw_norm_2", "ffn_gate_inp",
            "ffn_gate_inp_scale", "ffn_down_exps")}
        if self.gated:
            out["ffn_gate"] = "required"
        if self.gated and self.gate_up == "fused":
            out["ffn_gate_up_exps"] = "required"
        else:
            out["ffn_up_exps"] = "required"
            if self.gated:
                out["ffn_gate_exps"] = "required"
        if self.expert_scale != "none":
            out["ffn_down_exps_scale"] = self.expert_scale
        return out

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        out = super().problems()
        if self.bias != "none":
            out.append((("bias",), "the dense MLP and the experts of this kind have no biases; write bias: none"))
        return out

    def check(self, c: Any) -> str | None:
        if c.intermediate_size == 0:
            return "intermediate_size (feed_forward_length) is 0 in a layer with a dense MLP beside its experts"
        if c.expert_count <= 0 or c.expert_intermediate_size == 0:
            return "expert_count and expert_intermediate_size must be positive in a layer with routed experts"
        if not 0 < c.expert_used_count <= c.expert_count:
            return f"expert_used_count = {c.expert_used_count} must be between 1 and expert_count = {c.expert_count}"
        return None
