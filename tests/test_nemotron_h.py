"""Nemotron-H (nemotron_h: Mamba-2 / relu² MLP / attention) and Nemotron-H MoE (nemotron_h_moe: Mamba-2 / relu²
experts, sigmoid-routed with a selection bias, plus a relu² shared expert / attention), verified like the other
families: tiny random transformers models (NemotronHForCausalLM; the MoE one also with Nemotron 3 Super's latent
experts and multi-token-prediction head) -> llama.cpp's own converter -> tfb's logits
against transformers' float32 logits at every position and against llama.cpp's; decoding with the recurrent
state against the full forward; greedy generation against transformers'; a Q8_0 file; and files whose layer
arrays disagree with each other or with the tensors, refused with one clear message. Each layer is ONE of a
mixer or a feed-forward after one norm: the `none` mixer kind (tfb/spec/kinds/none.py) makes the feed-forward
layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import (
    assert_decoding_equals_full,
    assert_greedy_equals_transformers,
    assert_logits_match,
    compare,
    ids_for,
    record_routes,
)
from gguf import GGUFValueType
from llama_reference import llama_cpp_logits
from test_check import rewrite

import tfb
from tfb.authoring.check import check
from tfb.errors import ConfigError, WeightError
from tfb.gguf.reader import GGUFFile
from tfb.nn.ffn.routed import Experts
from tfb.nn.mixers.attention import Attention
from tfb.nn.mixers.ssd import CHUNK, SSDLayer, SSMState
from tfb.nn.mlp import MLP
from tfb.quant import PackedTensor
from tfb.text.generate import Session, generate_ids

FAMILIES = ["nemotron_h", "nemotron_h_moe"]
SHAPES = [(1, 1), (2, 1), (2, 40), (1, 2 * CHUNK + 13)]  # the last crosses two of the scan's chunks
# the tiny models' layers: Mamba-2, feed-forward, attention, twice (the file's arrays say so)
MIXERS = [SSDLayer, type(None), Attention, SSDLayer, type(None), Attention]


def _ffns(family: str) -> list[type]:
    ffn = Experts if family == "nemotron_h_moe" else MLP
    return [type(None), ffn, type(None), type(None), ffn, type(None)]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    assert model.config.per_layer["n_kv_heads"] == (0, 0, 2, 0, 0, 2)
    assert model.config.per_layer["intermediate_size"][1] > 0
    assert [type(b.mixer) for b in model.blocks] == MIXERS
    assert [type(b.ffn) for b in model.blocks] == _ffns(family)
    assert all(b.attn_norm is not None and b.ffn_norm is None for b in model.blocks)  # one norm per layer
    assert not model.blocks[2].mixer.opts.use_rope
    compare(model, reference, SHAPES)


def test_the_experts_are_relu_squared_up_and_down_sigmoid_routed(tiny_model) -> None:
    reference, path = tiny_model("nemotron_h_moe", "f32")
    model = tfb.load(path)
    moe = model.blocks[1].ffn
    assert isinstance(moe, Experts) and moe.shared is not None
    assert (moe.gating, moe.gated, moe.activation.kind, moe.top_k) == ("sigmoid", False, "relu_squared", 3)
    assert moe.normalize and moe.scale == 2.5 and moe.selection_bias is not None
    assert not moe.shared.gated and moe.shared.activation.kind == "relu_squared"
    chosen = record_routes([model.blocks[1].ffn, model.blocks[4].ffn])
    compare(model, reference, [(2, 40)])
    assert torch.cat(chosen).unique().numel() == 8  # every expert serves some token


def test_latent_experts_and_the_prediction_head_left_unread(tiny_model) -> None:
    """Nemotron 3 Super's experts run in a smaller width (moe_latent_size) between two projections; the router
    and the shared expert read the full width. Its multi-token-prediction head is one more block, counted in
    block_count and the per-layer arrays: not run (as llama.cpp), nor reported as unread."""
    reference, path = tiny_model("nemotron_h_moe_latent", "f32")
    model = tfb.load(path)  # a tensor left unread would warn, an error in these tests
    assert (model.config.block_count, model.config.n_layers, len(model.blocks)) == (5, 4, 4)
    assert model.config.per_layer["n_kv_heads"] == (0, 0, 2, 0)  # the head's value (2) dropped with it
    report = check(path)
    assert report.ok and any("left unread as the spec says" in f.message for f in report.findings)
    moe = model.blocks[1].ffn
    assert isinstance(moe, Experts) and moe.latent_down is not None and moe.latent_up is not None
    assert moe.up.shape == (8, 32, 32) and moe.down.shape == (8, 32, 32) and moe.router.in_features == 64
    assert tfb.load(tiny_model("nemotron_h_moe", "f32")[1]).blocks[1].ffn.latent_down is None
    compare(model, reference, SHAPES[:3])


@pytest.mark.parametrize("family", [*FAMILIES, "nemotron_h_moe_latent"])
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same file (the same layer rule: feed_forward_length, then head_count_kv)."""
    path = tiny_model(family, "f32")[1]
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_spec_fits_the_converted_file(tiny_model, family: str) -> None:
    report = check(tiny_model(family, "f32")[1])
    assert report.ok, "\n".join(report.lines())
    assert report.tensors_checked > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_with_the_state_equals_the_full_forward(tiny_model, family: str) -> None:
    model = tfb.load(tiny_model(family, "f32")[1])
    chunked, single = assert_decoding_equals_full(model, length=CHUNK + 14)
    assert chunked.length == single.length == CHUNK + 14
    assert isinstance(single.layers[0], SSMState) and single.layers[0].ssm.dtype == torch.float32
    assert single.layers[1] is None and single.layers[4] is None  # feed-forward layers keep nothing


def test_greedy_equals_transformers_generate(tiny_model) -> None:
    reference, path = tiny_model("nemotron_h_moe", "f32")
    model = tfb.load(path)
    assert_greedy_equals_transformers(model, reference, 12, vocab=50264)


def test_a_session_goes_back_to_a_snapshot(tiny_model) -> None:
    """A chat over layers with a recurrent state, a KV cache or nothing: an edited turn goes back to the
    snapshot after the previous prompt, and each reply equals a fresh generation."""
    model = tfb.load(tiny_model("nemotron_h_moe", "f32")[1])
    session = Session(model.new_cache())
    first = [5, 17, 33, 2, 90, 41]
    list(generate_ids(model, first, max_tokens=4, session=session))
    assert len(session.snapshots) == 1 and session.snapshots[0].saved[1] is None  # a feed-forward layer
    edited = [*first, 99, 98, 97]
    assert session.reuse(edited) == len(first) and session.cache.length == len(first)
    session.tokens = first[:]
    assert list(generate_ids(model, edited, max_tokens=4, session=session)) == \
        list(generate_ids(model, edited, max_tokens=4))


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_files(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "q8_0")
    with GGUFFile(path) as gguf:
        types = {name: info.ggml_type.name for name, info in gguf.tensors.items()}
    matrices = [n for n in types if any(f".{s}." in n for s in ("ssm_in", "ssm_out", "attn_q", "ffn_up", "ffn_down",
                                                                  "ffn_up_exps", "ffn_down_exps", "ffn_up_shexp"))]
    assert matrices and all(types[n] == "Q8_0" for n in matrices)
    kept = [n for n in types if ".ssm_conv1d." in n or ".ssm_a" in n or "_norm" in n or ".ffn_gate_inp." in n]
    assert kept and all(types[n] == "F32" for n in kept)
    model = tfb.load(path)
    assert isinstance(model.blocks[0].mixer.in_proj.packed, PackedTensor)  # kept in its blocks
    compare(model, reference, SHAPES[:3])


def _arrays(path: Path, out: Path, **arrays: list[int]) -> Path:
    keys = {"n_kv": "attention.head_count_kv", "ff": "feed_forward_length"}
    with GGUFFile(path) as gguf:
        arch = gguf.architecture
    return rewrite(path, out, {f"{arch}.{keys[k]}": (v, GGUFValueType.ARRAY) for k, v in arrays.items()})


BAD = {
    # an array that is not one value per layer
    "short_ffn_array": ({"ff": [0, 96, 0, 0, 96]}, ConfigError,
                        r"feed_forward_length has 5 values, expected one per layer: block_count = 6"),
    "long_kv_array": ({"n_kv": [0, 0, 2, 0, 0, 2, 2]}, ConfigError,
                      r"head_count_kv has 7 values, expected one per layer: block_count = 6"),
    # arrays that make a layer another kind than its tensors are: the missing tensors, and why the layer is
    # that kind
    "ffn_on_a_mamba_layer": ({"ff": [96, 96, 0, 0, 96, 0]}, WeightError,
                             r"blk\.0\.ffn_up\.weight, blk\.0\.ffn_down\.weight \(layer 0 is mixer `none` "
                             r"\(nonzero: intermediate_size = 96\) and ffn `dense`"),
    "attention_on_a_mamba_layer": ({"n_kv": [2, 0, 2, 0, 0, 2]}, WeightError,
                                   r"blk\.0\.attn_q\.weight.*not ssd: zero: n_kv_heads = 2"),
    "mamba_on_an_attention_layer": ({"n_kv": [0, 0, 0, 0, 0, 2]}, WeightError,
                                    r"blk\.2\.ssm_in\.weight.*layer 2 is mixer `ssd`"),
}


@pytest.mark.parametrize("case", BAD)
def test_layer_arrays_that_disagree_are_refused(tiny_model, tmp_path: Path, case: str) -> None:
    arrays, error, message = BAD[case]
    with pytest.raises(error, match=message):
        tfb.load(_arrays(tiny_model("nemotron_h", "f32")[1], tmp_path / "bad.gguf", **arrays))
