"""llama.cpp's metadata key for each config field (gguf.constants `Keys`), for `tfb draft`.

A drafted spec reads a key when the file has it and the base spec's rule does not read it already. The
two norm epsilons are one field: which key a file carries tells the norm kind (see draft.py).
"""

from __future__ import annotations

from tfb.spec.kinds.routed import GATING_FUNCS

NORM_EPS_KEYS = {"rmsnorm": "{arch}.attention.layer_norm_rms_epsilon",
                 "layernorm": "{arch}.attention.layer_norm_epsilon"}

KEYS: dict[str, tuple[str, ...]] = {
    "vocab_size": ("{arch}.vocab_size",),
    "context_length": ("{arch}.context_length",),
    "hidden_size": ("{arch}.embedding_length",),
    "n_layers": ("{arch}.block_count",),
    "intermediate_size": ("{arch}.feed_forward_length",),
    "n_heads": ("{arch}.attention.head_count",),
    "n_kv_heads": ("{arch}.attention.head_count_kv",),
    # latent attention files give one head's sizes in the *_mla keys (key_length is then the latent cache's)
    "head_dim": ("{arch}.attention.key_length_mla", "{arch}.attention.key_length"),
    "value_dim": ("{arch}.attention.value_length_mla", "{arch}.attention.value_length"),
    "q_lora_rank": ("{arch}.attention.q_lora_rank",),
    "kv_lora_rank": ("{arch}.attention.kv_lora_rank",),
    "attention_scale": ("{arch}.attention.scale",),
    "rope_base": ("{arch}.rope.freq_base",),
    "rope_dims": ("{arch}.rope.dimension_count",),
    "rope_scaling": ("{arch}.rope.scaling.type",),
    "rope_scale_factor": ("{arch}.rope.scaling.factor", "{arch}.rope.scale_linear"),
    "rope_original_context": ("{arch}.rope.scaling.original_context_length",),
    "rope_attn_factor": ("{arch}.rope.scaling.attn_factor",),
    "yarn_beta_fast": ("{arch}.rope.scaling.yarn_beta_fast",),
    "yarn_beta_slow": ("{arch}.rope.scaling.yarn_beta_slow",),
    "yarn_log_multiplier": ("{arch}.rope.scaling.yarn_log_multiplier",),
    "attn_temperature_scale": ("{arch}.attention.temperature_scale",),
    "attn_temperature_length": ("{arch}.attention.temperature_length",),
    "attn_softcap": ("{arch}.attn_logit_softcapping",),
    "final_softcap": ("{arch}.final_logit_softcapping",),
    "clamp_qkv": ("{arch}.attention.clamp_kqv",),
    "sliding_window": ("{arch}.attention.sliding_window",),
    "embedding_scale": ("{arch}.embedding_scale",),
    "residual_scale": ("{arch}.residual_scale",),
    "logit_scale": ("{arch}.logit_scale",),
    "expert_count": ("{arch}.expert_count",),
    "expert_used_count": ("{arch}.expert_used_count",),
    "expert_intermediate_size": ("{arch}.expert_feed_forward_length",),
    "expert_weights_norm": ("{arch}.expert_weights_norm",),
    "expert_weights_scale": ("{arch}.expert_weights_scale",),
    "expert_group_count": ("{arch}.expert_group_count",),
    "expert_group_used_count": ("{arch}.expert_group_used_count",),
    "expert_shared_intermediate_size": ("{arch}.expert_shared_feed_forward_length",),
    "expert_shared_count": ("{arch}.expert_shared_count",),
    "leading_dense_block_count": ("{arch}.leading_dense_block_count",),
    "moe_layer_step": ("{arch}.interleave_moe_layer_step",),
    # recurrent layers (short convolution, state space, delta-net) and the hybrids' layer choice
    "shortconv_l_cache": ("{arch}.shortconv.l_cache",),
    "ssm_conv_kernel": ("{arch}.ssm.conv_kernel",),
    "ssm_inner_size": ("{arch}.ssm.inner_size",),
    "ssm_state_size": ("{arch}.ssm.state_size",),
    "ssm_group_count": ("{arch}.ssm.group_count",),
    "ssm_head_count": ("{arch}.ssm.time_step_rank",),
    "ssm_time_step_rank": ("{arch}.ssm.time_step_rank",),
    "recurrent_layers": ("{arch}.attention.recurrent_layers",),
    "full_attention_interval": ("{arch}.full_attention_interval",),
}

# config fields that say which layers take which section of a `mixer:`/`ffn:` list: rule -> fields
# (per-layer arrays too: head_count_kv 0 marks a hybrid's layers without attention)
LAYER_RULE_FIELDS = {"below": ("leading_dense_block_count",), "every": ("moe_layer_step", "full_attention_interval"),
                     "zero": ("n_kv_heads", "recurrent_layers"), "nonzero": ("recurrent_layers", "n_kv_heads")}

# keys that settle a switch rather than a config field
PARALLEL_RESIDUAL = "{arch}.use_parallel_residual"
EXPERT_GATING = "{arch}.expert_gating_func"  # llama.cpp: 1 softmax, 2 sigmoid, 3 softmax over the chosen
EXPERT_GATING_VALUES = GATING_FUNCS
SLIDING_WINDOW_PATTERN = "{arch}.attention.sliding_window_pattern"  # per-layer booleans, or a period n
