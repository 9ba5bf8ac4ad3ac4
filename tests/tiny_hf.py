"""Tiny random transformers models, turned into GGUF files by llama.cpp's own converter.

Each family has a transformers config; weights are randomised with a fixed seed and a spread large
enough that mistakes show (random norm weights and biases too). For quantized files the transformers
weights are first rounded to what the storage type can hold, so the file holds exactly the reference
model's weights and one tolerance fits every type.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from llama_cpp import llama_cpp_dir  # noqa: E402
from requantize import quantize_values, requantize  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself
GPT2_VOCAB = 50257


@dataclass(frozen=True)
class Family:
    """A transformers model class and config, the tokenizer kind its converter wants, and which
    parameters stay F32 in quantized files (the converter's rules: routers, position embeddings)."""

    model_class: str
    config_class: str
    config: dict[str, Any]
    tokenizer: str = "spm"  # "spm" (tokenizer.model), "gpt2" (byte-level BPE tokenizer.json) or "spm_json"
    # (the spm model as a byte-fallback BPE tokenizer.json, which converters reading tokenizer.json with
    # gguf.LlamaHfVocab want)
    keep_f32: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()  # added to the gpt2 tokenizer (converters that look them up)
    architecture: str | None = None  # config.json's name, where real checkpoints use another than the class
    transposed: tuple[str, ...] = ()  # parameters stored [.., in, out], which the converter transposes
    stack_per_head_norms: bool = False  # see stack_per_head_norms()
    nextn_layers: bool = False  # see append_nextn_layers()
    mtp_like: tuple[int, ...] = ()  # see append_mtp_layers()
    mtp_block_like: int | None = None  # see append_mtp_block()
    config_json: tuple[tuple[str, Any], ...] = ()  # config.json entries as real checkpoints write them
    config_drop: tuple[str, ...] = ()  # config.json entries real checkpoints lack (transformers saves every field)
    converter_args: tuple[str, ...] = ()  # extra arguments to convert_hf_to_gguf.py (e.g. --no-mtp)
    adjust: tuple[tuple[str, float, float], ...] = ()  # (name part, factor, shift) applied after randomising
    model_type: str | None = None  # config.json's model_type for the converter's tokenizer lookup (see qwen35moe)
    random_buffers: tuple[str, ...] = ()  # buffers (name parts) randomised like norm weights (gemma4's layer_scalar)
    chat_template: str | None = None  # a file of data/chat_templates, put in tokenizer_config.json for the converter

    @property
    def vocab_size(self) -> int:
        if self.tokenizer != "gpt2":
            return 320
        return GPT2_VOCAB + sum(1 for t in self.special_tokens if t != "<|endoftext|>")


BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)

PARTIAL_ROPE = dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)

MLA = dict(BASE, num_hidden_layers=3, num_key_value_heads=4, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=8,
           v_head_dim=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, moe_intermediate_size=32,
           n_shared_experts=1, routed_scaling_factor=2.5, first_k_dense_replace=1, norm_topk_prob=True,
           scoring_func="sigmoid", topk_method="noaux_tc", pad_token_id=None,
           rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                                beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0))
# (the layer count is the length of layers_block_type)
NEMOTRON_H = dict({k: v for k, v in BASE.items() if k != "num_hidden_layers"}, head_dim=16, mamba_num_heads=8,
                  mamba_head_dim=16, n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=16, pad_token_id=None,
                  bos_token_id=None, eos_token_id=None)
# the converter pads the vocabulary to a multiple of 8 (not the embeddings, which llama.cpp then refuses): 7
# special tokens make GPT-2's 50257 a multiple, as real checkpoints' 131072 is
NEMOTRON_H_TOKENS = tuple(f"<SPECIAL_{i}>" for i in range(7))
# what transformers 5 saves for every NemotronHConfig and dense checkpoints lack
NEMOTRON_H_MOE_KEYS = ("num_experts_per_tok", "n_routed_experts", "n_shared_experts", "moe_intermediate_size",
                       "moe_shared_expert_intermediate_size", "moe_latent_size", "moe_shared_expert_overlap", "n_group",
                       "topk_group", "norm_topk_prob", "routed_scaling_factor", "mtp_layers_block_type",
                       "num_nextn_predict_layers")
DEEPSEEK: dict[str, Any] = dict(tokenizer="gpt2", keep_f32=("mlp.gate.weight",))

FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", "LlamaConfig", dict(BASE)),
    "llama_tied": Family("LlamaForCausalLM", "LlamaConfig", dict(BASE, tie_word_embeddings=True)),
    # every matrix row a multiple of 256: the 256-weight block types (k-quants, IQ*, TQ*) store every matrix
    "llama_wide": Family("LlamaForCausalLM", "LlamaConfig", dict(BASE, hidden_size=256, intermediate_size=256)),
    "llama3": Family("LlamaForCausalLM", "LlamaConfig", dict(
        BASE, rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position_embeddings=16))),
    "qwen2": Family("Qwen2ForCausalLM", "Qwen2Config", dict(BASE)),
    "qwen3": Family("Qwen3ForCausalLM", "Qwen3Config", dict(BASE, head_dim=32)),
    "starcoder2": Family("Starcoder2ForCausalLM", "Starcoder2Config", dict(BASE, use_bias=True),
                         tokenizer="gpt2"),
    # the phi2 converter writes no head_count_kv and a feed-forward length of 4 x hidden, as real Phi-2 has
    "phi2": Family("PhiForCausalLM", "PhiConfig", dict(
        BASE, num_key_value_heads=4, intermediate_size=256, rope_parameters=PARTIAL_ROPE), tokenizer="gpt2"),
    "phi3": Family("Phi3ForCausalLM", "Phi3Config", dict(BASE, pad_token_id=None, rope_parameters=PARTIAL_ROPE)),
    # a sliding window in the file (the converter writes it), which llama.cpp's phi3 switches off
    "phi3_window": Family("Phi3ForCausalLM", "Phi3Config", dict(BASE, pad_token_id=None, sliding_window=8,
                                                                 rope_parameters=PARTIAL_ROPE)),
    # an original context below llama.cpp's context step of 256: llama.cpp rounds any context past it
    "phi3_longrope_32": Family("Phi3ForCausalLM", "Phi3Config", dict(
        BASE, pad_token_id=None, max_position_embeddings=128, original_max_position_embeddings=32,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=32,
                             short_factor=[1.0 + 0.1 * i for i in range(8)],
                             long_factor=[1.0 + 0.9 * i for i in range(8)]))),
    # an original context of 256 (llama.cpp's context step, see tests/llama_reference.py): llama.cpp runs
    # the short factors at a context of 256, the long ones beyond
    "phi3_longrope": Family("Phi3ForCausalLM", "Phi3Config", dict(
        BASE, pad_token_id=None, max_position_embeddings=1024, original_max_position_embeddings=256,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=256,
                             short_factor=[1.0 + 0.1 * i for i in range(8)],
                             long_factor=[1.0 + 0.9 * i for i in range(8)]))),
    "mistral3": Family("Ministral3ForCausalLM", "Ministral3Config", dict(
        BASE, head_dim=16, max_position_embeddings=256,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                             beta_fast=8.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.5,
                             llama_4_scaling_beta=0.3))),
    "qwen3moe": Family("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(
        BASE, head_dim=16, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=64, norm_topk_prob=True),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight",)),
    "mixtral": Family("MixtralForCausalLM", "MixtralConfig", dict(BASE, num_local_experts=4, num_experts_per_tok=2),
                      keep_f32=("mlp.gate.weight",)),
    "mistral": Family("MistralForCausalLM", "MistralConfig", dict(BASE, sliding_window=8)),
    "gemma": Family("GemmaForCausalLM", "GemmaConfig", dict(BASE, num_key_value_heads=1, head_dim=16)),
    "gemma2": Family("Gemma2ForCausalLM", "Gemma2Config", dict(
        BASE, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
        attn_logit_softcapping=3.0, final_logit_softcapping=5.0)),
    "gemma3": Family("Gemma3ForCausalLM", "Gemma3TextConfig", dict(
        BASE, num_hidden_layers=7, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                         "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=4.0)})),
    # gemma3's language model inside a multimodal checkpoint (Gemma 3 4B and larger): text_config, prefixed names,
    # a small vision tower and projector, which the converter drops from the text model's file
    "gemma3_vision": Family("Gemma3ForConditionalGeneration", "Gemma3Config", dict(
        mm_tokens_per_image=4, text_config=dict(
            BASE, vocab_size=320, num_hidden_layers=7, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
            rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                             "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=4.0)}),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8))),
    # mistral3's language model inside a multimodal checkpoint (Ministral 3 as released), a small Pixtral tower
    "mistral3_vision": Family("Mistral3ForConditionalGeneration", "Mistral3Config", dict(
        text_config=dict(
            BASE, model_type="ministral3", vocab_size=320, head_dim=16, max_position_embeddings=256,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                                 beta_fast=8.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.5,
                                 llama_4_scaling_beta=0.3)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, head_dim=16))),
    "granite": Family("GraniteForCausalLM", "GraniteConfig", dict(
        BASE, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0)),
    "olmo": Family("OlmoForCausalLM", "OlmoConfig", dict(BASE, clip_qkv=1.0), tokenizer="gpt2"),
    "olmo2": Family("Olmo2ForCausalLM", "Olmo2Config", dict(BASE), tokenizer="gpt2"),
    "smollm3": Family("SmolLM3ForCausalLM", "SmolLM3Config", dict(BASE, num_hidden_layers=4, pad_token_id=None)),
    "stablelm": Family("StableLmForCausalLM", "StableLmConfig", dict(
        BASE, use_qkv_bias=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                      partial_rotary_factor=0.25)), tokenizer="gpt2"),
    "stablelm_parallel": Family("StableLmForCausalLM", "StableLmConfig", dict(
        BASE, use_parallel_residual=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                               partial_rotary_factor=0.5)), tokenizer="gpt2"),
    "stablelm_qk_norm": Family("StableLmForCausalLM", "StableLmConfig", dict(  # StableLM 2 12B's per-head Q/K norms
        BASE, qk_layernorm=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                      partial_rotary_factor=0.25)), tokenizer="gpt2",
        stack_per_head_norms=True),
    "gpt2": Family("GPT2LMHeadModel", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, n_ctx=128),
                   tokenizer="gpt2"),
    "glm4": Family("Glm4ForCausalLM", "Glm4Config", dict(BASE, head_dim=16, attention_bias=True, pad_token_id=None),
                   tokenizer="gpt2", special_tokens=("<|endoftext|>", "<|user|>")),
    "gpt-oss": Family("GptOssForCausalLM", "GptOssConfig", dict(
        BASE, head_dim=16, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                             beta_fast=32.0, beta_slow=1.0, truncate=True)),
        tokenizer="gpt2", keep_f32=("router.weight",), transposed=("experts.gate_up_proj", "experts.down_proj")),
    # Phi-3.5-MoE's layout: longrope factors with short/long mscale (equal, as released), Q/K/V/O and output
    # biases, a window as long as the context. The original context is 256 (llama.cpp's smallest context
    # step) so that llama.cpp can run both factor sets: short at a context of 256, long beyond.
    "phimoe": Family("PhimoeForCausalLM", "PhimoeConfig", dict(
        BASE, num_local_experts=4, num_experts_per_tok=2, attention_bias=True, lm_head_bias=True, pad_token_id=None,
        max_position_embeddings=1024, sliding_window=1024,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=256,
                             short_factor=[1.0 + 0.1 * i for i in range(8)],
                             long_factor=[1.0 + 0.9 * i for i in range(8)],
                             short_mscale=1.243163121016122, long_mscale=1.243163121016122)),
        keep_f32=("router.weight",), architecture="PhiMoEForCausalLM"),
    # DeepSeek V3: MLA with q_lora (v_head_dim differs from qk_nope_head_dim so a mixed-up split shows; every
    # matrix row a multiple of 32 so Q8_0/Q4_0 files quantize k_b/v_b and the experts too); 8 experts in 4
    # groups of which 2 are kept, sigmoid scores with a selection bias (scoring_func is what the converter
    # reads: transformers' config has no such field), renormalised and scaled, a shared expert; layer 0 dense.
    # YaRN with mscale_all_dim, as the real checkpoints: the softmax scale carries mscale^2.
    "deepseek_v3": Family("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(MLA, q_lora_rank=96), **DEEPSEEK),
    # without q_lora_rank llama.cpp reads the file only at 26 or 27 layers (its "lite" rule): see families.md
    "deepseek_v3_lite": Family("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(
        MLA, q_lora_rank=None, num_hidden_layers=26), **DEEPSEEK),
    # DeepSeek-V2-Lite's routing: softmax, greedy top-k, no renormalisation, scaled; 2 shared experts
    "deepseek_v2": Family("DeepseekV2ForCausalLM", "DeepseekV2Config", dict(
        MLA, q_lora_rank=None, num_hidden_layers=27, n_group=None, topk_group=None, norm_topk_prob=False,
        n_shared_experts=2, routed_scaling_factor=1.5, topk_method="greedy", scoring_func="softmax",
        rope_parameters=dict(MLA["rope_parameters"], mscale=0.707, mscale_all_dim=0.707)), **DEEPSEEK),
    # rows of 256 for k-quants: k_b (qk_nope_head_dim), v_b (kv_lora_rank), q_b (q_lora_rank), the experts'
    # down (moe_intermediate_size), attn_output (heads x v_head_dim); tied embeddings keep the F32 file at 66 MB
    "deepseek_v3_wide": Family("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(
        MLA, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=256, qk_rope_head_dim=64,
        v_head_dim=128, num_experts_per_tok=2, moe_intermediate_size=256, tie_word_embeddings=True), **DEEPSEEK),
    # GLM-4.5: partial NEOX rope, Q/K norm, QKV bias, layer 0 dense, sigmoid experts with selection bias in 2
    # groups (1 kept) + a shared expert; the checkpoint carries one next-token-prediction layer past the last
    "glm4moe": Family("Glm4MoeForCausalLM", "Glm4MoeConfig", dict(
        BASE, num_hidden_layers=3, head_dim=24, attention_bias=True, use_qk_norm=True, n_routed_experts=8,
        num_experts_per_tok=3, n_group=2, topk_group=1, moe_intermediate_size=32, n_shared_experts=1,
        routed_scaling_factor=2.5, first_k_dense_replace=1, norm_topk_prob=True, num_mtp_layers=1,
        pad_token_id=None, rope_parameters=PARTIAL_ROPE),
        tokenizer="gpt2", special_tokens=("<|endoftext|>", "[gMASK]", "<|user|>", "<|observation|>"),
        keep_f32=("mlp.gate.weight",), nextn_layers=True),
    "qwen2moe": Family("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        BASE, intermediate_size=128, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
        shared_expert_intermediate_size=96,
        norm_topk_prob=False, pad_token_id=None),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight", "shared_expert_gate.weight")),
    # OLMoE: Q/K norms over all heads at once; MHA because llama.cpp's attn_k_norm is n_embd long (transformers'
    # is kv_heads x head_dim), and no clip_qkv, which llama.cpp's olmoe graph does not apply
    "olmoe": Family("OlmoeForCausalLM", "OlmoeConfig", dict(
        BASE, num_key_value_heads=4, num_experts=8, num_experts_per_tok=3, intermediate_size=32, pad_token_id=None),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight",)),
    "granitemoe": Family("GraniteMoeForCausalLM", "GraniteMoeConfig", dict(
        BASE, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, embedding_multiplier=3.0,
        residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0),
        keep_f32=("router.weight",)),
    # Granite MoE Shared: the same with an ungated shared expert (llama.cpp's granitemoe reads it when the file
    # gives expert_shared_feed_forward_length)
    "granitemoe_shared": Family("GraniteMoeSharedForCausalLM", "GraniteMoeSharedConfig", dict(
        BASE, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, shared_intermediate_size=64,
        embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0),
        keep_f32=("router.weight",)),
    # ERNIE 4.5: layer 0 dense, then every layer MoE (softmax, selection bias, renormalised) + 2 shared experts.
    # The converter writes the shared experts' length as intermediate_size // num_key_value_heads: 128 // 2 = 64
    # = 2 x 32, as it happens to be for the real 21B model (12288 // 4 = 2 x 1536).
    "ernie4_5_moe": Family("Ernie4_5_MoeForCausalLM", "Ernie4_5_MoeConfig", dict(
        BASE, intermediate_size=128, moe_num_experts=8, moe_k=3, moe_intermediate_size=32, moe_num_shared_experts=2,
        moe_layer_start_index=1, moe_layer_interval=1, pad_token_id=None),
        keep_f32=("mlp.gate.weight",)),
    # ERNIE 4.5 MoE without shared experts (as ERNIE-4.5-300B-A47B), experts on every second layer from layer 1
    # (1 and 3); llama.cpp's graph and transformers agree on that rule, though llama.cpp's loader expects expert
    # tensors in every layer from the first routed one on and so refuses such a file (it has only step-1 files)
    "ernie4_5_moe_interleaved": Family("Ernie4_5_MoeForCausalLM", "Ernie4_5_MoeConfig", dict(
        BASE, num_hidden_layers=4, intermediate_size=128, moe_num_experts=8, moe_k=3, moe_intermediate_size=32,
        moe_num_shared_experts=0, moe_layer_start_index=1, moe_layer_interval=2, pad_token_id=None),
        keep_f32=("mlp.gate.weight",)),
    # LFM2: short-convolution layers and attention layers (per-layer head_count_kv 0 on the conv layers in the
    # file), Q/K norms, NEOX rope, tied embeddings; the conv weights stay F32 (the converter and llama-quantize)
    "lfm2": Family("Lfm2ForCausalLM", "Lfm2Config", dict(
        BASE, num_hidden_layers=4, layer_types=["conv", "conv", "full_attention", "conv"],
        block_auto_adjust_ff_dim=False, max_position_embeddings=256), tokenizer="gpt2", keep_f32=("conv.conv.weight",)),
    # LFM2-MoE: the lfm2 layers with a dense feed-forward in the first num_dense_layers, then sigmoid-scored
    # experts with a selection bias, renormalised (as released: routed_scaling_factor 1, norm_topk_prob)
    "lfm2moe": Family("Lfm2MoeForCausalLM", "Lfm2MoeConfig", dict(
        BASE, num_hidden_layers=4, layer_types=["conv", "full_attention", "conv", "conv"], num_dense_layers=1,
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, max_position_embeddings=256),
        tokenizer="gpt2", keep_f32=("conv.conv.weight", "feed_forward.gate.weight")),
    # Llama 4 text: 4 layers, the 4th without rope (full attention, temperature tuning), the others chunked
    # with a chunk of 8 < the test length, L2 Q/K norm on rope layers; MoE on odd layers (interleave step 2)
    # with a top-1 sigmoid router applied to the expert input, and a shared expert. llama.cpp hard-codes the
    # chunk (8192), the temperature floor (8192) and scale (0.1) and the no-rope step (4); the file carries
    # none of them: see families.md.
    "llama4": Family("Llama4ForCausalLM", "Llama4TextConfig", dict(
        BASE, num_hidden_layers=4, head_dim=16, intermediate_size=32, intermediate_size_mlp=96, num_local_experts=4,
        num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=8, attn_temperature_tuning=True,
        floor_scale=8, attn_scale=0.1, use_qk_norm=True, pad_token_id=None,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16)),
        tokenizer="gpt2", keep_f32=("router.weight",), transposed=("experts.gate_up_proj", "experts.down_proj")),
    # Llama 4 as released: the vision-language class (a one-layer vision tower, which the text converter leaves
    # out), llama4's text model under text_config and language_model.
    "llama4_vl": Family("Llama4ForConditionalGeneration", "Llama4Config", dict(
        text_config=dict(
            BASE, vocab_size=GPT2_VOCAB, num_hidden_layers=4, head_dim=16, intermediate_size=32,
            intermediate_size_mlp=96, num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
            attention_chunk_size=8, attn_temperature_tuning=True, floor_scale=8, attn_scale=0.1, use_qk_norm=True,
            pad_token_id=None, rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=16)),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=16, patch_size=8, projector_input_dim=64, projector_output_dim=64,
                           vision_output_dim=32)),
        tokenizer="gpt2", keep_f32=("router.weight",), transposed=("experts.gate_up_proj", "experts.down_proj")),
    # Mamba-2: 8 heads of 16 over an inner width of 128, B/C in 2 groups of state 16, a conv of 4; transformers
    # scans in chunks of 16 (the tests' prompts cross them); the converter keeps the conv weights F32
    "mamba2": Family("Mamba2ForCausalLM", "Mamba2Config", dict(
        hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, expand=2, n_groups=2, state_size=16,
        conv_kernel=4, chunk_size=16, pad_token_id=None, bos_token_id=None, eos_token_id=None),
        keep_f32=("conv1d.weight",)),
    # Granite 4.0-H: Mamba-2 layers (8 heads of 16, 2 groups) and rope-free attention on layers 1 and 3 (the file's
    # per-layer head_count_kv is 0 on the others); softmax experts renormalised plus an ungated shared MLP
    "granitehybrid": Family("GraniteMoeHybridForCausalLM", "GraniteMoeHybridConfig", dict(
        BASE, num_hidden_layers=4, layer_types=["mamba", "attention", "mamba", "attention"], num_local_experts=4,
        num_experts_per_tok=2, intermediate_size=32, shared_intermediate_size=96, embedding_multiplier=3.0,
        residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0, mamba_n_heads=8, mamba_d_head=16,
        mamba_expand=2, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=16),
        keep_f32=("router.layer.weight", "conv1d.weight"),
        # transformers 5 saves layer_types as linear_attention / full_attention; the checkpoints (and the
        # converter, which looks for "attention") name them mamba / attention
        config_json=(("layer_types", ["mamba", "attention", "mamba", "attention"]),)),
    # Falcon-H1: attention and Mamba-2 side by side in every layer (4 query heads of 16, 2 KV heads; 8 SSM heads of
    # 16 over an inner width of 128 that differs from 2 x hidden, 2 groups of state 16), then a SwiGLU MLP. Every
    # multiplier is set away from 1 so that each place the converter folds one into the weights shows, each a power
    # of 2 so that the folding commutes with quantization (the converter scales the pre-rounded weights before it
    # quantizes them); the gated norm groups as llama.cpp does (gate, then norm: mamba_norm_before_gate false, as
    # in the trained models). The converter reads head_dim from config.json, which transformers 5 does not save.
    "falcon_h1": Family("FalconH1ForCausalLM", "FalconH1Config", dict(
        BASE, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4,
        mamba_chunk_size=16, mamba_rms_norm=True, mamba_norm_before_gate=False, embedding_multiplier=2.0,
        lm_head_multiplier=0.5, mlp_multipliers=[2.0, 0.5], key_multiplier=0.25, attention_in_multiplier=2.0,
        attention_out_multiplier=0.5, ssm_multipliers=[0.5, 2.0, 0.25, 4.0, 0.5], ssm_in_multiplier=2.0,
        ssm_out_multiplier=0.5, pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        tokenizer="gpt2", keep_f32=("conv1d.weight",), config_json=(("head_dim", 16),)),
    # Falcon-H1 without the gated norm (mamba_rms_norm false, as in Falcon-H1-0.5B..34B): y * silu(z) goes
    # straight to the out-projection, and the file has no ssm_norm tensor
    "falcon_h1_no_norm": Family("FalconH1ForCausalLM", "FalconH1Config", dict(
        BASE, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4,
        mamba_chunk_size=16, mamba_rms_norm=False, embedding_multiplier=1.5, lm_head_multiplier=0.7,
        ssm_multipliers=[0.5, 1.2, 0.8, 1.1, 0.6], key_multiplier=0.8, ssm_out_multiplier=0.75, pad_token_id=None,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        tokenizer="gpt2", keep_f32=("conv1d.weight",), config_json=(("head_dim", 16),)),
    # Falcon-H1 with tied embeddings (as Falcon-H1-Tiny): the converter folds embedding_multiplier into token_embd,
    # which is also the output, and lm_head_multiplier into nothing
    "falcon_h1_tied": Family("FalconH1ForCausalLM", "FalconH1Config", dict(
        BASE, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4,
        mamba_chunk_size=16, embedding_multiplier=2.0, lm_head_multiplier=0.5, tie_word_embeddings=True,
        pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        tokenizer="gpt2", keep_f32=("conv1d.weight",), config_json=(("head_dim", 16),)),
    # Qwen3-Next: gated delta-net layers with a full (gated) attention layer every 4th (layer 3; 4 layers), 2
    # value heads per key head in the delta-net, a quarter of each attention head rotated, experts with a
    # sigmoid-gated shared expert. The checkpoint has no MTP layers: --no-mtp. Decays and betas are kept moderate
    # (A = -exp(A_log) near -0.1..-0.3, beta/alpha projections scaled down), as in trained models: fully random
    # ones wipe the state at once and leave some heads' outputs near zero, where the gated RMS norm magnifies
    # float32 rounding ~100x per layer and the reference's own precision falls below the 1e-4 the tests ask.
    "qwen3next": Family("Qwen3NextForCausalLM", "Qwen3NextConfig", dict(
        BASE, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=16,
        linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=8,
        num_experts_per_tok=3, moe_intermediate_size=32, shared_expert_intermediate_size=64, norm_topk_prob=True,
        pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight", "shared_expert_gate.weight", "conv1d"),
        converter_args=("--no-mtp",), adjust=(("in_proj_ba", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Qwen3.5 (dense): as qwen3next with separate beta/alpha projections, value heads the converter reorders (2 per
    # key head here), a dense feed-forward, and M-RoPE sections (text positions: every section the same position).
    # Value heads of 32, one quantization block each: the converter's reordering of out_proj's columns then moves
    # whole blocks, so rounding the transformers weights row by row matches the file.
    "qwen35": Family("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", dict(
        BASE, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=32,
        linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, pad_token_id=None,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                             mrope_section=[2, 1, 1], mrope_interleaved=True)),
        tokenizer="gpt2", keep_f32=("conv1d",), converter_args=("--no-mtp",),
        adjust=(("in_proj_a", 0.3, 0.0), ("in_proj_b", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Qwen3.5 MoE: qwen35's delta-net and attention with qwen3next's experts and sigmoid-gated shared expert. Its
    # model_type makes AutoTokenizer (which the converter's pre-tokenizer check runs) pick a Qwen3.5 tokenizer
    # class over tokenizer_config's GPT2Tokenizer; the dense text model's type does not.
    "qwen35moe": Family("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", dict(
        BASE, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=32,
        linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=8,
        num_experts_per_tok=3, moe_intermediate_size=32, shared_expert_intermediate_size=64, pad_token_id=None,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                             mrope_section=[2, 1, 1], mrope_interleaved=True)),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight", "shared_expert_gate.weight", "conv1d"),
        converter_args=("--no-mtp",), model_type="qwen3_5_text",
        adjust=(("in_proj_a", 0.3, 0.0), ("in_proj_b", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Qwen3-Next with its multi-token-prediction block (mtp.*, a full-attention layer shaped like layer 3 with its own
    # projection and norms), which the converter writes by default as block 4, counting it from the tensors (its
    # config gives no mtp_num_hidden_layers); llama.cpp skips it
    "qwen3next_mtp": Family("Qwen3NextForCausalLM", "Qwen3NextConfig", dict(
        BASE, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=16,
        linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=8,
        num_experts_per_tok=3, moe_intermediate_size=32, shared_expert_intermediate_size=64, norm_topk_prob=True,
        pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight", "shared_expert_gate.weight", "conv1d"), mtp_block_like=3,
        adjust=(("in_proj_ba", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Qwen3.5 as released: the vision-language class (a one-block vision tower, which the text converter leaves
    # out), the text model's config under text_config, its weights under model.language_model., and a
    # multi-token-prediction block (mtp.*, counted by text_config's mtp_num_hidden_layers) written as block 4
    "qwen35_vl": Family("Qwen3_5ForConditionalGeneration", "Qwen3_5Config", dict(
        text_config=dict(
            BASE, vocab_size=GPT2_VOCAB, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4,
            linear_key_head_dim=32, linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
            mtp_num_hidden_layers=1, pad_token_id=None,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                 mrope_section=[2, 1, 1], mrope_interleaved=True)),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           num_position_embeddings=16, patch_size=4)),
        tokenizer="gpt2", keep_f32=("conv1d",), mtp_block_like=3, model_type="qwen3_5_text",
        adjust=(("in_proj_a", 0.3, 0.0), ("in_proj_b", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Qwen3.5 MoE as released: the vision-language class (a one-block vision tower, which the text converter leaves
    # out), qwen35moe's text model under text_config and model.language_model.
    "qwen35moe_vl": Family("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeConfig", dict(
        text_config=dict(
            BASE, vocab_size=GPT2_VOCAB, num_hidden_layers=4, head_dim=16, linear_conv_kernel_dim=4,
            linear_key_head_dim=32, linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
            num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, shared_expert_intermediate_size=64,
            pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                                    mrope_section=[2, 1, 1], mrope_interleaved=True)),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           num_position_embeddings=16, patch_size=4)),
        tokenizer="gpt2", keep_f32=("mlp.gate.weight", "shared_expert_gate.weight", "conv1d"),
        converter_args=("--no-mtp",), model_type="qwen3_5_text",
        adjust=(("in_proj_a", 0.3, 0.0), ("in_proj_b", 0.3, 0.0), ("A_log", 1.0, -3.0))),
    # Nemotron-H: each layer is ONE of Mamba-2 (8 heads of 16, 2 groups), rope-free attention, or a relu^2 MLP (up,
    # down), after one norm. transformers 5 saves the MoE fields of every NemotronHConfig, and the converter writes
    # nemotron_h_moe whenever it finds num_experts_per_tok, reading the config through AutoConfig (which adds it
    # back). Dense checkpoints, as the converter expects them, have no MoE fields and give the layer pattern as
    # hybrid_override_pattern (M, -, *: it reads "-" layers as MLPs only from that string) and num_hidden_layers.
    # An unknown model_type makes AutoConfig fail and the converter read config.json as it is.
    "nemotron_h": Family("NemotronHForCausalLM", "NemotronHConfig", dict(
        NEMOTRON_H, layers_block_type=["linear_attention", "mlp", "full_attention", "linear_attention", "mlp",
                                       "full_attention"]),
        tokenizer="gpt2", special_tokens=NEMOTRON_H_TOKENS, keep_f32=("conv1d.weight",),
        config_json=(("hybrid_override_pattern", "M-*M-*"), ("num_hidden_layers", 6)),
        config_drop=(*NEMOTRON_H_MOE_KEYS, "layers_block_type"), model_type="nemotron_h_dense"),
    # Nemotron-H MoE (Nemotron 3): Mamba-2 / relu^2 experts (up, down; 8 of 32, top 3) sigmoid-routed with a
    # selection bias, renormalised and scaled by 2.5, plus a relu^2 shared expert (64) / rope-free attention
    "nemotron_h_moe": Family("NemotronHForCausalLM", "NemotronHConfig", dict(
        NEMOTRON_H, layers_block_type=["linear_attention", "moe", "full_attention", "linear_attention", "moe",
                                       "full_attention"], n_routed_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=64, n_shared_experts=1,
        routed_scaling_factor=2.5, norm_topk_prob=True, n_group=1, topk_group=1),
        tokenizer="gpt2", special_tokens=NEMOTRON_H_TOKENS, keep_f32=("conv1d.weight", "gate.weight")),
    # Nemotron 3 Super: latent experts (they run in 32 of the 64, fc1/fc2_latent_proj around them) and a
    # multi-token-prediction head (an attention and a MoE sub-layer), which the converter appends as block 4
    "nemotron_h_moe_latent": Family("NemotronHForCausalLM", "NemotronHConfig", dict(
        NEMOTRON_H, layers_block_type=["linear_attention", "moe", "full_attention", "moe"], n_routed_experts=8,
        num_experts_per_tok=3, moe_intermediate_size=32, moe_shared_expert_intermediate_size=64, n_shared_experts=1,
        routed_scaling_factor=2.5, norm_topk_prob=True, n_group=1, topk_group=1, moe_latent_size=32,
        num_nextn_predict_layers=1),
        tokenizer="gpt2", special_tokens=NEMOTRON_H_TOKENS, keep_f32=("conv1d.weight", "gate.weight"),
        mtp_like=(2, 1)),
    # Gemma 4: sliding (S) and full (F) layers S S F S F, the last two reading layers 1 and 2's keys and values;
    # full layers with wider heads, one KV head, their keys as values and a quarter of each head rotated
    "gemma4": Family("Gemma4ForCausalLM", "Gemma4TextConfig", dict(
        BASE, num_hidden_layers=5, head_dim=16, global_head_dim=32, num_global_key_value_heads=1, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"],
        hidden_size_per_layer_input=32, vocab_size_per_layer_input=320, attention_k_eq_v=True, num_kv_shared_layers=2,
        final_logit_softcapping=5.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                         "full_attention": dict(rope_type="proportional", partial_rotary_factor=0.25,
                                                rope_theta=1000000.0)}),
        tokenizer="spm_json", random_buffers=("layer_scalar",), chat_template="google-gemma-4-31B-it.jinja"),
    # Gemma 4 with experts: each layer's dense MLP beside 4 routed experts (2 per token); no per-layer embeddings
    "gemma4moe": Family("Gemma4ForCausalLM", "Gemma4TextConfig", dict(
        BASE, num_hidden_layers=3, head_dim=16, global_head_dim=32, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], hidden_size_per_layer_input=0,
        enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32, final_logit_softcapping=5.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                         "full_attention": dict(rope_type="proportional", partial_rotary_factor=0.25,
                                                rope_theta=1000000.0)}),
        tokenizer="spm_json", random_buffers=("layer_scalar",)),
    # Gemma 4 as most of it is published: the vision-and-audio class (one-block towers and their embedders, which
    # the text converter leaves out), gemma4's text model under text_config and model.language_model.
    "gemma4_vl": Family("Gemma4ForConditionalGeneration", "Gemma4Config", dict(
        text_config=dict(
            BASE, vocab_size=320, num_hidden_layers=5, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
            sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                           "sliding_attention", "full_attention"],
            hidden_size_per_layer_input=32, vocab_size_per_layer_input=320, attention_k_eq_v=True,
            num_kv_shared_layers=2, final_logit_softcapping=5.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                             "full_attention": dict(rope_type="proportional", partial_rotary_factor=0.25,
                                                    rope_theta=1000000.0)}),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16, patch_size=4, position_embedding_size=16),
        audio_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          subsampling_conv_channels=[8, 4], output_proj_dims=32)),
        tokenizer="spm_json", random_buffers=("layer_scalar",)),
}


# --------------------------------------------------------------------------------------------- weights


def randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif p.ndim == 1:  # norm weights: far from 1 so a missing or misplaced norm shows
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        saved = model.state_dict()
        for name, b in model.named_buffers():  # routing selection biases kept as buffers (DeepSeek V3, GLM-4.5)
            if name in saved and name.endswith("bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)


def preround(model: torch.nn.Module, outtype: str, keep_f32: tuple[str, ...], transposed: tuple[str, ...] = ()) -> None:
    """Round matrices to what `outtype` stores, along rows in ggml blocks, as the file will (the rows of a
    parameter the converter transposes run along its second-to-last dimension)."""
    from gguf import GGMLQuantizationType

    if outtype == "f32":
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or name.endswith("bias") or any(k in name for k in keep_f32):
                continue
            if outtype == "f16":
                p.copy_(p.half().float())
            elif outtype == "bf16":
                p.copy_(p.bfloat16().float())
            else:
                qtype = GGMLQuantizationType[outtype.upper()]
                if name.endswith("kv_b_proj.weight"):  # latent attention: see split_kv_b
                    p.copy_(split_kv_b(p, model.config, qtype))
                else:
                    p.copy_(round_rows(p, qtype, any(t in name for t in transposed)))


def round_rows(x: torch.Tensor, qtype: Any, flip: bool = False) -> torch.Tensor:
    """x rounded to `qtype` along its rows, or along its second-to-last dimension where `flip`: rounded again
    until a rounding changes nothing, so that the file's own quantization of the result is exact (ggml's
    k-quant search moves a few blocks once more on its own output)."""
    from gguf.quants import dequantize

    values = (x.transpose(-1, -2) if flip else x).contiguous().numpy().astype(np.float32)
    for _ in range(8):
        out = dequantize(quantize_values(values, qtype), qtype).reshape(values.shape)
        if np.array_equal(out, values):
            break
        values = out
    rounded = torch.from_numpy(values)
    return rounded.transpose(-1, -2) if flip else rounded


def split_kv_b(weight: torch.Tensor, config: Any, qtype: Any) -> torch.Tensor:
    """The DeepSeek converter splits kv_b_proj ([heads x (nope + v), kv_lora]) per head into attn_k_b, the nope
    rows transposed ([kv_lora, nope]: rows along nope), and attn_v_b (rows along kv_lora): each part is rounded
    along the rows the file stores."""
    heads, nope, v = config.num_key_value_heads, config.qk_nope_head_dim, config.v_head_dim
    k_b, v_b = weight.view(heads, nope + v, -1).split([nope, v], dim=1)
    return torch.cat((round_rows(k_b, qtype, flip=True), round_rows(v_b, qtype)), dim=1).view_as(weight)


# ------------------------------------------------------------------------------------------ tokenizers

_SPM_CACHE: dict[int, bytes] = {}


def spm_model(vocab_size: int = 320) -> bytes:
    """A small SentencePiece BPE model trained on fixed text: deterministic bytes."""
    if vocab_size not in _SPM_CACHE:
        import sentencepiece as spm

        rng = random.Random(0)
        words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "tfb",
                 "model", "spec", "token", "layer", "rope"]
        text = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=vocab_size,
                                       model_type="bpe", byte_fallback=True, num_threads=1, minloglevel=2)
        _SPM_CACHE[vocab_size] = buf.getvalue()
    return _SPM_CACHE[vocab_size]


def write_gpt2_tokenizer(directory: Path, special_tokens: tuple[str, ...] = ()) -> int:
    """GPT-2's real byte-level BPE (from the llama.cpp test vocabulary) as tokenizer.json, with extra special
    tokens appended; the converter recognises its pre-tokenizer hash. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from tfb.gguf.reader import GGUFFile

    with GGUFFile(DATA / "vocab" / "ggml-vocab-gpt-2.gguf") as g:
        tokens = g.metadata["tokenizer.ggml.tokens"].value
        merges = [tuple(m.split(" ", 1)) for m in g.metadata["tokenizer.ggml.merges"].value]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(special_tokens))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    return tok.get_vocab_size()


def write_spm_json_tokenizer(directory: Path) -> None:
    """spm_model() as tokenizer.json: its pieces and merges in a BPE with byte fallback, the pieces' word
    boundary marker (U+2581) for spaces and a decoder that undoes both, as Llama-style tokenizer.json files
    are (what gguf.LlamaHfVocab reads)."""
    import tempfile

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    with tempfile.NamedTemporaryFile(suffix=".model") as f:
        f.write(spm_model())
        f.flush()
        parts = SentencePieceExtractor(f.name).extract(models.BPE)
    tok = Tokenizer(models.BPE(dict(parts["vocab"]), parts["merges"], unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


# ------------------------------------------------------------------------------------------ conversion


def build_hf(name: str, seed: int = 0) -> tuple[torch.nn.Module, Family]:
    import transformers

    family = FAMILIES[name]
    config = getattr(transformers, family.config_class)(vocab_size=family.vocab_size, **family.config)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config).eval()
    randomize(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            for part, factor, shift in family.adjust:
                if part in name:
                    p.mul_(factor).add_(shift)
        gen = torch.Generator().manual_seed(seed)
        for name, b in model.named_buffers():
            if any(part in name for part in family.random_buffers):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model, family


def convert(model: torch.nn.Module, family: Family, outtype: str, workdir: Path) -> Path:
    """Save the model, run llama.cpp's converter on it, requantize if the converter cannot write the type."""
    hf_dir = workdir / "hf"
    model.save_pretrained(hf_dir)
    if family.stack_per_head_norms:
        stack_per_head_norms(hf_dir / "model.safetensors")
    if family.nextn_layers:
        append_nextn_layers(hf_dir)
    if family.mtp_like:
        append_mtp_layers(hf_dir, family.mtp_like)
    if family.mtp_block_like is not None:
        append_mtp_block(hf_dir, family.mtp_block_like)
    if family.architecture is not None:
        config = json.loads((hf_dir / "config.json").read_text())
        (hf_dir / "config.json").write_text(json.dumps({**config, "architectures": [family.architecture]}))
    if family.config_json:
        config = json.loads((hf_dir / "config.json").read_text())
        (hf_dir / "config.json").write_text(json.dumps({**config, **dict(family.config_json)}))
    if family.config_drop:
        config = json.loads((hf_dir / "config.json").read_text())
        kept = {k: v for k, v in config.items() if k not in family.config_drop}
        (hf_dir / "config.json").write_text(json.dumps(kept))
    if family.model_type is not None:
        config = json.loads((hf_dir / "config.json").read_text())
        (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": family.model_type}))
    if family.tokenizer == "gpt2":
        write_gpt2_tokenizer(hf_dir, family.special_tokens)
    elif family.tokenizer == "spm_json":
        write_spm_json_tokenizer(hf_dir)
    else:
        (hf_dir / "tokenizer.model").write_bytes(spm_model())
    if family.chat_template is not None:
        config = json.loads((hf_dir / "tokenizer_config.json").read_text())
        template = (DATA / "chat_templates" / family.chat_template).read_text(encoding="utf-8")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    base = "f32" if outtype not in CONVERTER_TYPES else outtype
    out = workdir / f"model-{base}.gguf"
    converter = llama_cpp_dir()
    result = subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(hf_dir),
                             "--outfile", str(out), "--outtype", base, *family.converter_args],
                            cwd=converter, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{result.stderr[-4000:]}")
    if outtype in CONVERTER_TYPES:
        return out
    from gguf import GGMLQuantizationType

    final = workdir / f"model-{outtype}.gguf"
    requantize(str(out), str(final), GGMLQuantizationType[outtype.upper()])
    return final


def stack_per_head_norms(checkpoint: Path) -> None:
    """Stack `...q_layernorm.norms.{h}.weight` into `...q_layernorm.weight` [heads, head_dim] (k alike), in
    head order, as the StableLM converter's `_stack_qk_norm` does. Its `modify_tensors` returns that
    stacking from inside a generator (llama-cpp-python 0.3.36), which drops it and then fails on the
    unprocessed norms; given the stacked tensor, the converter names and writes it as it meant to."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint)
    heads: dict[str, dict[int, torch.Tensor]] = {}
    for name in [n for n in tensors if ".norms." in n]:
        prefix, index = name.rsplit(".norms.", 1)
        heads.setdefault(prefix, {})[int(index.split(".")[0])] = tensors.pop(name)
    for prefix, by_head in heads.items():
        tensors[f"{prefix}.weight"] = torch.stack([by_head[h] for h in range(len(by_head))])
    save_file(tensors, checkpoint, metadata={"format": "pt"})


def append_nextn_layers(hf_dir: Path, seed: int = 1) -> None:
    """Append the next-token-prediction layers that config.json's num_nextn_predict_layers counts, as the
    real checkpoints store them: `model.layers.{n}` past the last layer, a whole decoder layer (random, shaped
    like the last) plus `eh_proj` [hidden, 2 x hidden], `enorm`, `hnorm` and `shared_head.norm`. transformers
    keeps them in a separate MTP model, so the saved causal LM has none; a file made from them shows that a
    loader skips them as llama.cpp does."""
    from safetensors.torch import load_file, save_file

    config = json.loads((hf_dir / "config.json").read_text())
    n_layers, count = config["num_hidden_layers"], config.get("num_nextn_predict_layers") or 0
    checkpoint = hf_dir / "model.safetensors"
    tensors = load_file(checkpoint)
    gen = torch.Generator().manual_seed(seed)
    last = f"model.layers.{n_layers - 1}."
    hidden = config["hidden_size"]
    for k in range(count):
        prefix = f"model.layers.{n_layers + k}."
        extra = {name.replace(last, prefix, 1): t for name, t in tensors.items() if name.startswith(last)}
        extra[prefix + "eh_proj.weight"] = torch.empty(hidden, 2 * hidden)
        for norm in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
            extra[prefix + norm] = torch.empty(hidden)
        for name, t in extra.items():
            tensors[name] = (torch.rand(t.shape, generator=gen) + 0.5 if t.ndim == 1
                             else torch.randn(t.shape, generator=gen) * 0.2).to(t.dtype)
    save_file(tensors, checkpoint, metadata={"format": "pt"})


def append_mtp_layers(hf_dir: Path, like: tuple[int, ...], seed: int = 1) -> None:
    """Append a multi-token-prediction head as Nemotron-H checkpoints store it: `mtp.layers.{j}.`, each shaped
    like the model's layer like[j] (random), the first with `eh_proj` [hidden, 2 x hidden], `enorm` and `hnorm`,
    the last with `final_layernorm`. transformers' causal LM has no MTP weights; the converter folds them into
    one block past the last layer."""
    from safetensors.torch import load_file, save_file

    hidden = json.loads((hf_dir / "config.json").read_text())["hidden_size"]
    checkpoint = hf_dir / "model.safetensors"
    tensors = load_file(checkpoint)
    gen = torch.Generator().manual_seed(seed)
    extra: dict[str, torch.Tensor] = {}
    for j, layer in enumerate(like):
        source = f"backbone.layers.{layer}."
        extra.update({name.replace(source, f"mtp.layers.{j}.", 1): t for name, t in tensors.items()
                      if name.startswith(source)})
    extra["mtp.layers.0.eh_proj.weight"] = torch.empty(hidden, 2 * hidden)
    last = f"mtp.layers.{len(like) - 1}."
    for norm in ("mtp.layers.0.enorm.weight", "mtp.layers.0.hnorm.weight", last + "final_layernorm.weight"):
        extra[norm] = torch.empty(hidden)
    for name, t in extra.items():
        tensors[name] = (torch.rand(t.shape, generator=gen) + 0.5 if t.ndim == 1
                         else torch.randn(t.shape, generator=gen) * 0.2).to(t.dtype)
    save_file(tensors, checkpoint, metadata={"format": "pt"})



def append_mtp_block(hf_dir: Path, like: int, seed: int = 1) -> None:
    """Append a multi-token-prediction block as Qwen3-Next and Qwen3.5 checkpoints store it: `mtp.layers.0.`, shaped
    like the model's layer `like` (random), and `mtp.fc` [hidden, 2 x hidden], `mtp.pre_fc_norm_embedding`,
    `mtp.pre_fc_norm_hidden` and `mtp.norm`. transformers' causal LM has no MTP weights."""
    from safetensors.torch import load_file, save_file

    config = json.loads((hf_dir / "config.json").read_text())
    hidden = config.get("text_config", config)["hidden_size"]
    checkpoint = hf_dir / "model.safetensors"
    tensors = load_file(checkpoint)
    gen = torch.Generator().manual_seed(seed)
    source = next(p for p in (f"model.layers.{like}.", f"model.language_model.layers.{like}.")
                  if any(name.startswith(p) for name in tensors))
    extra = {name.replace(source, "mtp.layers.0.", 1): t for name, t in tensors.items() if name.startswith(source)}
    extra["mtp.fc.weight"] = torch.empty(hidden, 2 * hidden)
    for norm in ("mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.norm.weight"):
        extra[norm] = torch.empty(hidden)
    for name, t in extra.items():
        tensors[name] = (torch.rand(t.shape, generator=gen) + 0.5 if t.ndim == 1
                         else torch.randn(t.shape, generator=gen) * 0.2).to(t.dtype)
    save_file(tensors, checkpoint, metadata={"format": "pt"})


Builder = Callable[[str, str], tuple[torch.nn.Module, Path]]
