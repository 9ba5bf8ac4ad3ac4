"""The `gated_delta_net` mixer kind: the gated delta rule (linear attention with a decaying, error-correcting
state per head), as llama.cpp's delta-net graph runs it.

Sizes (llama.cpp's ssm keys): K = ssm_group_count key heads of d_k = ssm_state_size, H = ssm_time_step_rank
value heads of d_v = ssm_inner_size / H, conv kernel L = ssm_conv_kernel. Per token x:
  [q ; k ; v] = W_qkv x  (K d_k, K d_k, H d_v)     z = W_z x  (H d_v)       (attn_qkv, attn_gate)
     or, fused (ssm_in, older files): W_in x holds per key head [q_j (d_k); k_j (d_k); v (H/K d_v); z (H/K d_v)],
     the same q, k, v, z regrouped (the value heads of key head j are j H/K ... (j+1) H/K - 1)
  [b ; a]     = W_ba x   (per key head: H/K b's then H/K a's; or ssm_beta, ssm_alpha)
  [q ; k ; v] = silu(causal depthwise conv over the last L inputs, weights ssm_conv1d [channels, L])
  q, k        = q / sqrt(|q|^2 + eps), k alike, per head (eps = norm_eps); q *= 1 / sqrt(d_k)
  value head h reads key head h // (H/K) (grouped) or h % K (tiled: files whose value heads the converter reordered)
  g_h   = ssm_a_h * softplus(a_h + dt_bias_h)     (ssm_a = -exp(A_log) as the converter stores it)
  beta_h = sigmoid(b_h)
  S_t   = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T      (S: [d_k, d_v] per value head)
  o_t   = S_t^T q_t
  y     = W_out [rmsnorm(o_h) * ssm_norm * silu(z_h)]_h
A prompt runs in chunks of 64 positions (the same sums in the chunked WY form; tfb/nn/mixers/gated_delta_net.py).
The layer state is the last L - 1 conv inputs and S, float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import ConfigField, KindSection, Need

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class GatedDeltaNet(KindSection):
    """Gated delta-rule linear attention."""

    role: ClassVar[str] = "mixer"
    SLOTS: ClassVar[tuple[str, ...]] = (
        "attn_qkv", "attn_gate", "ssm_in", "ssm_ba", "ssm_beta", "ssm_alpha", "ssm_conv1d", "ssm_dt_bias", "ssm_a",
        "ssm_norm", "ssm_out")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("ssm_conv_kernel", "int", "width of the causal convolution of recurrent layers (ssm.conv_kernel)",
                    0, "nonnegative"),
        ConfigField("ssm_state_size", "int", "state size of recurrent layers (delta-net: the key head width)", 0,
                    "nonnegative"),
        ConfigField("ssm_group_count", "int", "groups of recurrent layers (delta-net: the key heads)", 0,
                    "nonnegative"),
        ConfigField("ssm_time_step_rank", "int", "time-step rank of recurrent layers (delta-net: the value heads)",
                    0, "nonnegative"),
        ConfigField("recurrent_layers", "int", "per layer: 1 where the layer is recurrent, 0 where it is attention "
                    "(attention.recurrent_layers)", 0, "nonnegative"),
        ConfigField("full_attention_interval", "int", "every how many layers a hybrid has a full-attention layer "
                    "(the last of each group)", 0, "nonnegative"),
        ConfigField("ssm_inner_size", "int", "inner width of recurrent layers (delta-net: value heads x value width)",
                    0, "nonnegative"),
    )

    kind: Literal["gated_delta_net"] = "gated_delta_net"
    beta_alpha: Literal["fused", "separate"] = Field(
        "fused", description="fused: one ssm_ba projection, per key head the betas then the alphas of its value "
        "heads; separate: ssm_beta and ssm_alpha")
    qkvz: Literal["separate", "fused", "auto"] = Field(
        "separate", description="separate: attn_qkv and attn_gate; fused: one ssm_in holding per key head its q, k, "
        "v's and z's (older converters); auto: fused where the file has ssm_in")
    value_heads: Literal["grouped", "tiled"] = Field(
        "grouped", description="order of the value heads: grouped: value head h reads key head h // (H/K); tiled: "
        "key head h % K (files whose converter reordered the value heads for broadcasting)")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        ba = ("ssm_ba",) if self.beta_alpha == "fused" else ("ssm_beta", "ssm_alpha")
        qkvz = ("ssm_in",) if facts.fused_qkvz else ("attn_qkv", "attn_gate")
        names = (*qkvz, *ba, "ssm_conv1d", "ssm_dt_bias", "ssm_a", "ssm_norm", "ssm_out")
        return {slot: "required" for slot in names}

    def fact_options(self) -> dict[str, set[bool]]:
        return {"fused_qkvz": {"separate": {False}, "fused": {True}, "auto": {False, True}}[self.qkvz]}

    def file_facts(self, has: Callable[[str], bool]) -> dict[str, bool]:
        return {"fused_qkvz": self.qkvz == "fused" or (self.qkvz == "auto" and has("ssm_in"))}

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        if self.qkvz != "separate" and self.value_heads == "tiled":
            return [(("qkvz",), "a fused ssm_in groups the value heads by key head; it cannot go with "
                     "value_heads: tiled")]
        return []

    def check(self, c: Any) -> str | None:
        for name in ("ssm_conv_kernel", "ssm_state_size", "ssm_group_count", "ssm_time_step_rank", "ssm_inner_size"):
            if getattr(c, name) <= 0:
                return f"`{name}` = {getattr(c, name)} must be positive in a gated delta-net layer"
        if c.ssm_time_step_rank % c.ssm_group_count:
            return (f"ssm_time_step_rank = {c.ssm_time_step_rank} (value heads) is not a multiple of ssm_group_count = "
                    f"{c.ssm_group_count} (key heads)")
        if c.ssm_inner_size % c.ssm_time_step_rank:
            return (f"ssm_inner_size = {c.ssm_inner_size} is not a multiple of ssm_time_step_rank = "
                    f"{c.ssm_time_step_rank} (the value heads)")
        return None
