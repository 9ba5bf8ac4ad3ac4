"""tfb's logits equal transformers' on the same weights, through llama.cpp's own converter."""

from __future__ import annotations

import copy

import pytest
import torch
from compare import compare, ids_for, record_routes

import tfb
from tfb.nn.ffn.routed import Experts

# (family, storage type): every family in F32; storage types on a dense and an expert model
CASES = [
    ("llama", "f32"), ("llama_tied", "f32"), ("llama3", "f32"), ("qwen2", "f32"), ("qwen3", "f32"),
    ("starcoder2", "f32"), ("phi2", "f32"), ("phi3", "f32"), ("mistral3", "f32"), ("qwen3moe", "f32"),
    ("mixtral", "f32"),
    ("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"), ("llama", "q4_0"),
    ("qwen2", "f16"), ("qwen3", "bf16"), ("qwen3", "q8_0"), ("qwen3", "q4_0"),
    ("mixtral", "q8_0"), ("qwen3moe", "q4_0"), ("phi3", "q8_0"), ("starcoder2", "bf16"),
]
# batch x sequence; 40 crosses llama3's, phi3's and mistral3's original contexts (16, 32, 32)
SHAPES = [(1, 1), (3, 1), (2, 40)]


@pytest.mark.parametrize(("family", "outtype"), CASES)
def test_logits_match_transformers(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    compare(tfb.load(path), reference, SHAPES)


def test_float16_file_runs_in_float16_without_copies(tiny_model) -> None:
    reference, path = tiny_model("llama", "f16")
    model = tfb.load(path, dtype=torch.float16)
    weight = model.blocks[0].mixer.q.weight
    assert weight is not None and weight.dtype == torch.float16
    ids = ids_for(model.config.vocab_size, 2, 9)
    with torch.no_grad():
        ours, ref = model(ids), reference(ids).logits
    assert (ours - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_longrope_short_and_long_factors_follow_the_run_context(tiny_model) -> None:
    """llama.cpp picks the factor set once, from the context it runs with; transformers picks per call
    from the sequence length. They agree when both sides pick the same set."""
    reference, path = tiny_model("phi3_longrope", "f32")
    original = 256
    short = tfb.load(path, context_length=original)
    long = tfb.load(path, context_length=1024)
    factors_short, factors_long = short.rotaries[0].freq_factors, long.rotaries[0].freq_factors
    assert factors_short is not None and factors_long is not None and not torch.equal(factors_short, factors_long)
    compare(short, reference, [(2, 1), (1, original)])
    compare(long, reference, [(1, original + 8)])


def test_yarn_and_temperature_beyond_the_original_context(tiny_model) -> None:
    reference, path = tiny_model("mistral3", "f32")
    model = tfb.load(path)
    assert model.config.rope_scaling == "yarn" and model.config.attn_temperature_scale > 0
    assert model.config.rope_original_context == 32
    compare(model, reference, [(1, 100)])  # positions 0..99: temperature steps 1, 2, 3


@pytest.mark.parametrize("family", ["qwen3moe", "mixtral"])
def test_moe_routes_tokens_to_many_experts(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    assert all(isinstance(block.ffn, Experts) for block in model.blocks)
    chosen = record_routes([block.ffn for block in model.blocks])
    compare(model, reference, [(2, 40)])
    experts = torch.cat([c.flatten() for c in chosen]).unique()
    assert len(experts) == model.config.expert_count  # every expert did some work


def test_mistral_window_is_ignored_like_llama_cpp(tiny_model) -> None:
    """Mistral files are `llama` architecture; llama.cpp applies no sliding window to them. Within the
    window both agree; beyond it tfb equals transformers with the window switched off."""
    reference, path = tiny_model("mistral", "f32")
    window = reference.config.sliding_window
    model = tfb.load(path)
    compare(model, reference, [(2, window)])
    full = copy.deepcopy(reference)
    full.config.sliding_window = None
    compare(model, full, [(2, 3 * window)])
