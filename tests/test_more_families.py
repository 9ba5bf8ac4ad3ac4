"""The families beyond the seed plan, verified like the seed: tiny transformers model -> llama.cpp's converter ->
tfb logits vs transformers float32 logits. Where llama.cpp computes something else than transformers (phimoe's
norms, routing and longrope magnitude), the reference is llama.cpp's own logits on the same file
(tests/test_llama_cpp_reference.py; docs/llama-cpp-vs-transformers.md)."""

from __future__ import annotations

import pytest
import torch
from compare import compare, ids_for

import tfb

AGREE = ["gemma", "gemma2", "gemma3", "granite", "olmo", "olmo2", "smollm3", "stablelm", "stablelm_parallel",
         "stablelm_qk_norm", "gpt2", "glm4", "gpt-oss"]
QUANTIZED = [("gemma2", "q8_0"), ("gpt-oss", "q8_0"), ("olmo2", "q4_0"), ("granite", "bf16")]
SHAPES = [(1, 1), (2, 1), (2, 40)]  # 40 > every window (8) and gpt-oss's original YaRN context (32)


@pytest.mark.parametrize("family", AGREE)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    compare(tfb.load(path), reference, SHAPES)


@pytest.mark.parametrize(("family", "outtype"), QUANTIZED)
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    compare(tfb.load(path), reference, SHAPES)


def test_switches_the_files_exercise(tiny_model) -> None:
    """The tiny models really use what their specs describe (so that agreement above means something)."""
    gemma2 = tfb.load(tiny_model("gemma2", "f32")[1])
    assert [b.mixer.opts.window for b in gemma2.blocks] == [8, 0, 8]
    assert gemma2.config.attn_softcap == 3.0 and gemma2.config.final_softcap == 5.0
    gemma3 = tfb.load(tiny_model("gemma3", "f32")[1])
    assert [bool(b.mixer.opts.window) for b in gemma3.blocks] == [True] * 5 + [False, True]
    local, full = gemma3.blocks[0].mixer.rotary, gemma3.blocks[5].mixer.rotary
    assert local.params.base == 10000.0 and local is gemma3.blocks[1].mixer.rotary  # one rope for the local layers
    assert full.params.base == 1e6 and full.params.freq_scale == 0.25
    smollm3 = tfb.load(tiny_model("smollm3", "f32")[1])
    assert [b.mixer.opts.use_rope for b in smollm3.blocks] == [True, True, True, False]
    assert tfb.load(tiny_model("stablelm_parallel", "f32")[1]).config.parallel_residual
    assert not tfb.load(tiny_model("stablelm", "f32")[1]).config.parallel_residual
    assert not tfb.load(tiny_model("stablelm", "f32")[1]).config.qk_norm
    per_head = tfb.load(tiny_model("stablelm_qk_norm", "f32")[1]).blocks[1].mixer
    assert per_head.q_norm.weight.shape == (4, 16) and per_head.k_norm.weight.shape == (2, 16)
    assert not torch.equal(per_head.q_norm.weight[0], per_head.q_norm.weight[1])  # each head its own weights
    oss = tfb.load(tiny_model("gpt-oss", "f32")[1])
    assert oss.blocks[0].mixer.sinks is not None and oss.config.rope_scaling == "yarn"


def test_gemma2_query_scale_follows_the_layer_count_as_llama_cpp_does(tmp_path) -> None:
    """llama.cpp infers gemma2's query scale from the layer count; the spec says it as a `cases` rule."""
    from tfb.gguf.reader import MetaValue
    from tfb.hparams import build_config

    spec = tfb.load_spec("gemma2")
    base = {"gemma2.context_length": 8192, "gemma2.embedding_length": 4608, "gemma2.attention.head_count": 32,
            "gemma2.attention.head_count_kv": 16, "gemma2.attention.key_length": 128,
            "gemma2.feed_forward_length": 36864, "gemma2.vocab_size": 256000,
            "gemma2.attention.layer_norm_rms_epsilon": 1e-6}

    def scale(layers: int) -> float:
        meta = {k: MetaValue(v, "float32" if isinstance(v, float) else "uint32")
                for k, v in {**base, "gemma2.block_count": layers}.items()}
        return build_config(spec, meta, set(), arch="gemma2", where="x").attention_scale

    assert scale(46) == pytest.approx(144 ** -0.5)  # 27B: 1/sqrt(4608 / 32)
    assert scale(42) == pytest.approx(128 ** -0.5)  # others: 1/sqrt(head_dim)


def test_phimoe_differs_from_transformers(tiny_model) -> None:
    """transformers' Phimoe is not the reference: LayerNorm, sparsemixer routing and the config's mscale where
    llama.cpp runs RMS norm plus bias, softmax top-k renormalised and the converter's attention factor
    (tfb equals llama.cpp there: tests/test_llama_cpp_reference.py). The difference is large, not rounding."""
    reference, path = tiny_model("phimoe", "f32")
    model = tfb.load(path)
    ids = ids_for(reference.config.vocab_size, 2, 40)
    with torch.no_grad():
        theirs = reference(ids).logits
        assert (model(ids) - theirs).abs().max() > 0.1 * theirs.abs().max()
