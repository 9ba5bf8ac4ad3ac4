"""The gated delta-net mixer and the qwen3next, qwen35 and qwen35moe families: tiny random transformers models
(Qwen3NextForCausalLM, Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM) converted by llama.cpp's own converter
(--no-mtp) against transformers' float32 logits at every position and llama.cpp's own, incremental decoding
against the full forward, a session going back to a snapshot, quantized files, which layers are attention, and
bad sizes. The qwen35 families exercise the separate beta/alpha projections and the tiled value-head order (2
value heads per key head)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import assert_decoding_equals_full, assert_logits_match, compare, ids_for, transformers_greedy
from gguf import GGUFReader, GGUFValueType
from llama_reference import llama_cpp_logits
from test_check import rewrite

import tfb
from tfb.errors import ConfigError
from tfb.nn.mixers.attention import Attention
from tfb.nn.mixers.gated_delta_net import GatedDeltaNetLayer, chunked_delta_rule
from tfb.quant import PackedTensor
from tfb.text.generate import GREEDY, Session, generate_ids

SHAPES = [(1, 1), (2, 1), (2, 40)]
FAMILIES = ["qwen3next", "qwen35", "qwen35moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [GatedDeltaNetLayer] * 3 + [Attention]  # the file's recurrent_layers
    assert model.blocks[3].mixer.opts.output_gate and model.blocks[3].mixer.opts.qk_norm == "rmsnorm"
    compare(model, reference, SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same file (its delta-net graph and recurrent memory), float32."""
    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), 1e-4)


def test_chunks_equal_the_recurrence() -> None:
    """The chunked form (two chunks and a part) against the delta rule one position at a time, from a state."""
    gen = torch.Generator().manual_seed(0)
    b, t, h, dk, dv = 2, 150, 3, 8, 5
    q = torch.randn(b, t, h, dk, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, t, h, generator=gen, dtype=torch.float64)
    beta = torch.rand(b, t, h, generator=gen, dtype=torch.float64)
    state = torch.randn(b, h, dk, dv, generator=gen, dtype=torch.float64)
    S, outs = state.clone(), []
    for i in range(t):
        S = S * g[:, i].exp()[..., None, None]
        delta = (v[:, i] - torch.einsum("bhkv,bhk->bhv", S, k[:, i])) * beta[:, i][..., None]
        S = S + k[:, i][..., None] * delta[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, i]))
    out, final = chunked_delta_rule(q, k, v, g, beta, state)
    assert out.dtype == final.dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.stack(outs, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(final.double(), S, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_equals_the_full_forward(tiny_model, family: str) -> None:
    # within 1e-4 of the largest logit, as the other families: the gated norm divides by the rms of each head's
    # output, which the tiny model's strong decays (g down to -17) make small, so float32 rounding shows there
    _, single = assert_decoding_equals_full(tfb.load(tiny_model(family, "f32")[1]))
    state, width = single.layers[0], {"qwen3next": 16, "qwen35": 32, "qwen35moe": 32}[family]
    assert state.ssm.dtype == torch.float32 and state.ssm.shape == (2, 4, width, width)  # value heads, d_k, d_v
    assert state.conv.shape == (2, 8 * width, 3)  # the last kernel - 1 inputs of q, k (2 heads) and v (4 heads)
    assert not single.truncate(10)  # a recurrent state cannot forget positions


def test_a_session_goes_back_to_a_snapshot(tiny_model) -> None:
    """An edited second turn: the session restores the snapshot after the first prompt and computes from there,
    giving the logits of a fresh pass over the new history."""
    model = tfb.load(tiny_model("qwen3next", "f32")[1])
    ids = ids_for(model.config.vocab_size, 1, 20)[0].tolist()
    session = Session(model.new_cache())
    with torch.no_grad():
        model(torch.tensor([ids[:8]]), session.cache)
        session.tokens = ids[:8]
        session.checkpoint()
        model(torch.tensor([ids[8:14]]), session.cache)
        session.tokens = ids[:14]
        edited = [*ids[:10], 7, 8, 9]
        shared = session.reuse(edited)
        assert shared == 8 and session.cache.length == 8
        resumed = model(torch.tensor([edited[shared:]]), session.cache)
        fresh = model(torch.tensor([edited]))
    torch.testing.assert_close(resumed, fresh[:, shared:], atol=1e-4 * fresh.abs().max().item(), rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers_generate(tiny_model, family: str) -> None:
    """tfb's generation loop (prompt in one pass, then one token at a time on the recurrent state) against
    transformers' generate with its own cache; then a second turn through the same session, which extends the
    first and so continues from its state."""
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    prompt = ids_for(model.config.vocab_size, 1, 7)[0].tolist()
    session = Session(model.new_cache())
    ours = list(generate_ids(model, prompt, max_tokens=12, sampling=GREEDY, session=session))
    theirs = transformers_greedy(reference, prompt, 12)
    assert ours == theirs
    follow = [*prompt, *ours, 5, 6]
    again = list(generate_ids(model, follow, max_tokens=4, sampling=GREEDY, session=session))
    fresh = list(generate_ids(model, follow, max_tokens=4, sampling=GREEDY))
    assert again == fresh


@pytest.mark.parametrize(("family", "outtype"), [("qwen3next", "q8_0"), ("qwen3next", "q4_0"), ("qwen35", "q4_0")])
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert types["blk.0.attn_qkv.weight"] == types["blk.0.ssm_out.weight"] == outtype.upper()
    assert types["blk.0.ssm_conv1d.weight"] == types["blk.0.ssm_a"] == "F32"  # kept F32 by the converter
    model = tfb.load(path)
    assert isinstance(model.blocks[0].mixer.qkv.packed, PackedTensor)  # the projections stay in their blocks
    compare(model, reference, SHAPES)


def test_attention_layers_from_the_interval_without_the_array(tiny_model, tmp_path: Path) -> None:
    """Without attention.recurrent_layers, every full_attention_interval-th layer is attention (llama.cpp's rule);
    the array, where present, decides."""
    _, path = tiny_model("qwen3next", "f32")
    drop = ("qwen3next.attention.recurrent_layers",)
    interval = tfb.load(rewrite(path, tmp_path / "i2.gguf", {"qwen3next.full_attention_interval": (
        4, GGUFValueType.UINT32)}, drop))
    assert [type(b.mixer) for b in interval.blocks] == [GatedDeltaNetLayer] * 3 + [Attention]
    flags = tfb.load(rewrite(path, tmp_path / "a.gguf", {"qwen3next.attention.recurrent_layers": (
        [True, True, True, False], GGUFValueType.ARRAY), "qwen3next.full_attention_interval": (
        2, GGUFValueType.UINT32)}))
    assert [type(b.mixer) for b in flags.blocks] == [GatedDeltaNetLayer] * 3 + [Attention]


def test_a_layer_array_of_the_wrong_length_is_refused(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("qwen3next", "f32")
    bad = rewrite(path, tmp_path / "bad.gguf", {"qwen3next.attention.recurrent_layers": (
        [True, True, False], GGUFValueType.ARRAY)})
    with pytest.raises(ConfigError, match=r"qwen3next\.attention\.recurrent_layers has 3 values, expected one per "
                       r"layer: block_count = 4"):
        tfb.load(bad)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("qwen3next.ssm.group_count", 3, "ssm_time_step_rank = 4 (value heads) is not a multiple of ssm_group_count = 3"),
    ("qwen3next.ssm.inner_size", 66, "ssm_inner_size = 66 is not a multiple of ssm_time_step_rank = 4"),
    ("qwen3next.ssm.conv_kernel", 0, "`ssm_conv_kernel` = 0 must be positive in a gated delta-net layer"),
    ("qwen3next.full_attention_interval", 0, "repeats every full_attention_interval = 0 layers"),
])
def test_bad_sizes_are_refused(tiny_model, tmp_path: Path, key: str, value: int, message: str) -> None:
    _, path = tiny_model("qwen3next", "f32")
    drop = ("qwen3next.attention.recurrent_layers",) if "interval" in key else ()
    bad = rewrite(path, tmp_path / "bad.gguf", {key: (value, GGUFValueType.UINT32)}, drop)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tfb.load(bad)
