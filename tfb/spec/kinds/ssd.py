"""The `ssd` mixer kind: the Mamba-2 selective state space (SSD) layer, a recurrent mixer whose state per
sequence is a fixed-size conv window and one [head_dim, state] matrix per head, whatever the context length.

Math, per token x (H = ssm_head_count heads of P = ssm_inner_size / H, G = ssm_group_count groups of
B/C with N = ssm_state_size, conv kernel K = ssm_conv_kernel):
  [z ; xBC ; dt] = W_in x                      z: inner, xBC: inner + 2 G N, dt: H
  xBC   = silu(conv(xBC) + b_conv)             causal depthwise conv over the last K inputs of each channel
  [x ; B ; C] = xBC                            x: [H, P], B and C: [G, N]; head h reads group h // (H / G)
  dt_h  = softplus(dt_h + dt_bias_h),  A_h = -exp(A_log_h) (the file stores A itself: ssm_a)
  S_h   = exp(dt_h A_h) S_h + dt_h x_h B_g^T   the state [P, N] per head, carried across tokens
  y_h   = S_h C_g + D_h x_h
  y     = W_out · rmsnorm_grouped(y * silu(z))  RMS norm over each of G groups of inner / G (weights [G, inner/G])
          (norm: optional: y = W_out · (y * silu(z)) in files without the norm's weights)
The prompt is processed in chunks with the equivalent closed form (the SSD "dual"): within a chunk,
y_l = sum_{s<=l} exp(cum_l - cum_s) (C_l · B_s) dt_s x_s + exp(cum_l) C_l S_0, cum the running sum of dt A.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import ConfigField, KindSection, Need

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class SSD(KindSection):
    """A Mamba-2 (SSD) layer: in-projection, causal conv, selective scan, gated RMS norm, out-projection."""

    role: ClassVar[str] = "mixer"
    SLOTS: ClassVar[tuple[str, ...]] = ("ssm_in", "ssm_conv1d", "ssm_conv1d_bias", "ssm_dt_bias", "ssm_a", "ssm_d",
                                        "ssm_norm", "ssm_out")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("ssm_conv_kernel", "int", "width of the causal conv of a state space layer (its window keeps "
                    "kernel - 1 inputs)", 0, "nonnegative"),
        ConfigField("ssm_inner_size", "int", "inner width of a state space layer (heads x head width)", 0,
                    "nonnegative"),
        ConfigField("ssm_state_size", "int", "state width N of a state space layer (per head: head width x N)", 0,
                    "nonnegative"),
        ConfigField("ssm_head_count", "int", "heads of a Mamba-2 layer (ssm.time_step_rank: one time step each)", 0,
                    "nonnegative"),
        ConfigField("ssm_group_count", "int", "groups of B and C shared by the heads of a Mamba-2 layer (also the "
                    "groups of its gated norm)", 0, "nonnegative"),
    )

    kind: Literal["ssd"] = "ssd"
    conv_bias: Literal["required", "optional"] = Field(
        "required", description="the conv's bias: required (Mamba-2) or optional (read when the file has it)")
    norm: Literal["required", "optional"] = Field(
        "required", description="the gated RMS norm: required, or optional (it applies where the file has its "
        "ssm_norm weights; without them y * silu(z) goes to the out-projection as it is)")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {slot: "required" for slot in self.SLOTS}
        out["ssm_conv1d_bias"] = self.conv_bias
        out["ssm_norm"] = self.norm
        return out

    def check(self, c: Any) -> str | None:
        for name in ("ssm_conv_kernel", "ssm_inner_size", "ssm_state_size", "ssm_head_count", "ssm_group_count"):
            if getattr(c, name) <= 0:
                return (f"{name} = {getattr(c, name)} must be positive in an ssd layer (the file's ssm.* keys: "
                        "conv_kernel, inner_size, state_size, time_step_rank, group_count)")
        if c.ssm_inner_size % c.ssm_head_count:
            return (f"ssm_inner_size = {c.ssm_inner_size} does not split into ssm_head_count = {c.ssm_head_count} "
                    "heads (ssm.inner_size must be a multiple of ssm.time_step_rank)")
        if c.ssm_head_count % c.ssm_group_count:
            return (f"ssm_head_count = {c.ssm_head_count} is not a multiple of ssm_group_count = "
                    f"{c.ssm_group_count} (ssm.time_step_rank, ssm.group_count: each group serves whole heads)")
        if c.ssm_inner_size % c.ssm_group_count:
            return (f"ssm_inner_size = {c.ssm_inner_size} does not split into ssm_group_count = {c.ssm_group_count} "
                    "norm groups (ssm.inner_size, ssm.group_count)")
        return None
