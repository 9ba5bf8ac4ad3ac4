"""The `latent_attention` mixer kind: multi-head latent attention (MLA). Keys and values of every head are
expanded from one low-rank latent per token, so the cache holds that latent and a small rope part shared by
all heads, not per-head keys and values.

Math, per token x (H heads, the config fields below; llama.cpp's absorbed form):
  q      = W_q x                      or, low-rank: W_qb · norm(W_qa x)          [H, nope + rope]
  q      = [q_nope (nope) ; q_pe (rope)] per head,  nope = head_dim - rope_dims, rope = rope_dims
  [c ; k_pe] = W_kv_a x               c: the latent (kv_lora_rank), k_pe: one rope head for all heads
  c      = norm(c);  q_pe, k_pe rotated by rope (over rope_dims only)
  q_abs[h] = K_b[h] q_nope[h]         K_b[h]: [kv_lora_rank, nope] (attn_k_b), q_nope in latent space
  score[h, s] = scale · (q_abs[h] · c_s + q_pe[h] · k_pe_s)
  o[h]   = V_b[h] · sum_s softmax(score[h])_s c_s       V_b[h]: [value_dim, kv_lora_rank] (attn_v_b)
  y      = W_o [o[1] ; ... ; o[H]]
  temperature (attn_temperature_scale s > 0): [q_abs ; q_pe] *= 1 + s log(floor((pos + o) / L) + 1)
  scale  = attention_scale · m^2, with the YaRN magnitude m = 1 + 0.1 · yarn_log_multiplier · ln(factor)
           on the whole score (rope's cos/sin are left unscaled): the MLA files' rule.
This equals attention with per-head keys [K_b[h]ᵀ c ; k_pe] and values V_b[h] c (the expanded form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tfb.spec.base import ConfigField, KindSection, Need, Strict

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class LatentRope(Strict):
    """Rotary embedding of the rope part of queries and keys (rope_dims dimensions, the config's rope
    scaling and frequencies)."""

    pairing: Literal["adjacent", "half"] = Field(
        "adjacent", description="adjacent: rotate (x0,x1),(x2,x3)... (GGML normal mode); half: rotate "
        "(x_i, x_{i+d/2}) (GGML NEOX mode)")


class LatentAttention(KindSection):
    """Multi-head latent attention: keys and values expanded from a cached low-rank latent."""

    role: ClassVar[str] = "mixer"
    SLOTS: ClassVar[tuple[str, ...]] = (
        "attn_q", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b",
        "attn_v_b", "attn_output")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("q_lora_rank", "int", "rank of the low-rank query (latent attention; 0: one query projection)",
                    0, "nonnegative"),
        ConfigField("kv_lora_rank", "int", "width of the key/value latent that latent attention caches", 0,
                    "nonnegative"),
        ConfigField("yarn_log_multiplier_stored", "float", "rope.scaling.yarn_log_multiplier as latent attention "
                    "files store it (0.1 x mscale_all_dim); a spec derives yarn_log_multiplier from it", 0.0),
    )

    kind: Literal["latent_attention"] = "latent_attention"
    query: Literal["direct", "low_rank"] = Field(
        "direct", description="direct: q = attn_q x; low_rank: q = attn_q_b norm(attn_q_a x) through q_lora_rank "
        "dimensions")
    rope: LatentRope = Field(LatentRope(), description="rotary embedding of the rope part")

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        query = ("attn_q_a", "attn_q_a_norm", "attn_q_b") if self.query == "low_rank" else ("attn_q",)
        rest = ("attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output")
        return {slot: "required" for slot in (*query, *rest)}

    def uses_rope(self) -> bool:
        return True

    def check(self, c: Any) -> str | None:
        if c.n_heads <= 0:
            return f"`n_heads` = {c.n_heads} must be positive in a latent attention layer"
        for name in ("head_dim", "value_dim", "attention_scale"):
            if not getattr(c, name) > 0:
                return f"`{name}` = {getattr(c, name)} must be positive in a latent attention layer"
        if c.kv_lora_rank <= 0:
            return "kv_lora_rank is 0 in a latent attention layer (the file needs attention.kv_lora_rank)"
        if self.query == "low_rank" and c.q_lora_rank <= 0:
            return "query: low_rank needs q_lora_rank > 0 (attention.q_lora_rank)"
        if c.kv_lora_rank > c.hidden_size:  # the cached latent wider than the residual stream compresses nothing
            return (f"kv_lora_rank = {c.kv_lora_rank} is larger than hidden_size = {c.hidden_size}: the latent "
                    "compresses keys and values below the model's width (check attention.kv_lora_rank in the file)")
        if c.rope_dims <= 0 or c.rope_dims % 2 or c.rope_dims >= c.head_dim:
            return (f"rope_dims = {c.rope_dims} must be even, positive and less than head_dim = {c.head_dim} "
                    "(the query head is nope + rope dimensions)")
        if c.rope_scaling == "yarn" and c.rope_base == 1.0:
            return "rope_base = 1 cannot be used with YaRN scaling (its correction dimensions divide by log(base))"
        return None
