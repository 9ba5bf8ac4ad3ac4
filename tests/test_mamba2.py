"""Mamba-2 (the `mamba2` mixer kind, the mamba2 spec) and Granite 4.0-H (granitehybrid: Mamba-2 and rope-free
attention layers, experts and a shared MLP), verified like the other families: tiny random transformers models
(Mamba2ForCausalLM, GraniteMoeHybridForCausalLM) -> llama.cpp's own converter -> tfb's logits against
transformers' float32 logits at every position and against llama.cpp's; decoding with the recurrent state (token
by token, and in chunks that cross the scan's chunk size) against the full forward; greedy generation against
transformers'; a Session going back to a snapshot; quantized files (the matrices quantized, conv weights, A, D and
norms F32 as llama.cpp keeps them); bad sizes refused with one message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import assert_greedy_equals_transformers, assert_logits_match, compare, ids_for
from gguf import GGUFValueType
from llama_reference import llama_cpp_logits
from test_check import rewrite

import tfb
from tfb.authoring.check import check
from tfb.errors import ConfigError, WeightError
from tfb.gguf.reader import GGUFFile
from tfb.nn.mixers.ssd import CHUNK, SSDLayer, SSMState
from tfb.quant import PackedTensor
from tfb.text.generate import Session, generate_ids

SHAPES = [(1, 1), (2, 1), (2, 40), (1, 2 * CHUNK + 13)]  # the last crosses two chunk boundaries
FAMILIES = ["mamba2", "granitehybrid"]


def _close(ours: torch.Tensor, full: torch.Tensor) -> None:
    torch.testing.assert_close(ours, full, atol=1e-4 * full.abs().max().item(), rtol=0)


def test_logits_match_transformers(tiny_model) -> None:
    reference, path = tiny_model("mamba2", "f32")
    model = tfb.load(path)
    mixer = model.blocks[0].mixer
    assert isinstance(mixer, SSDLayer) and model.blocks[0].ffn is None
    s = mixer.shape
    assert (s.heads, s.head_dim, s.groups, s.state, s.kernel) == (8, 16, 2, 16, 4)  # what the file exercises
    assert mixer.norm.groups == 2 and mixer.conv_bias is not None
    compare(model, reference, SHAPES)


def test_granitehybrid_layers_follow_the_file(tiny_model) -> None:
    reference, path = tiny_model("granitehybrid", "f32")
    model = tfb.load(path)
    assert model.config.per_layer["n_kv_heads"] == (0, 2, 0, 2)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["SSDLayer", "Attention", "SSDLayer", "Attention"]
    assert not model.blocks[1].mixer.opts.use_rope  # rope.scaling.finetuned = false in the file
    compare(model, reference, SHAPES)


def test_granitehybrid_rope_follows_the_key(tiny_model, tmp_path: Path) -> None:
    """A file whose rope.scaling.finetuned is true (llama.cpp's default) gets rope on its attention layers."""
    path = tiny_model("granitehybrid", "f32")[1]
    roped = tfb.load(rewrite(path, tmp_path / "rope.gguf", {"granitehybrid.rope.scaling.finetuned":
                                                             (True, GGUFValueType.BOOL)}))
    assert roped.blocks[1].mixer.opts.use_rope
    ids = ids_for(320, 1, 12)
    with torch.no_grad():
        assert not torch.allclose(roped(ids), tfb.load(path)(ids), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_spec_fits_the_converted_files(tiny_model, family: str) -> None:
    for outtype in ("f32", "q4_0"):
        report = check(tiny_model(family, outtype)[1])
        assert report.ok, "\n".join(report.lines())
        assert report.tensors_checked > 0
    if family == "mamba2":
        assert check(tiny_model(family, "f32")[1]).tensors_checked == 2 * 9 + 3  # 8 ssm tensors and a norm a layer


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same file (its sequential ggml_ssm_scan against the chunked form here)."""
    path = tiny_model(family, "f32")[1]
    ids = ids_for(320, 2, 40)
    with torch.no_grad():
        assert_logits_match(tfb.load(path)(ids), llama_cpp_logits(path, ids), 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_with_the_state_equals_the_full_forward(tiny_model, family: str) -> None:
    model = tfb.load(tiny_model(family, "f32")[1])
    length = CHUNK + 36
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(5))
    cuts = ((0, 11), (11, 12), (12, CHUNK + 20), (CHUNK + 20, length))
    with torch.no_grad():
        full = model(ids)
        chunked, single = model.new_cache(), model.new_cache()
        in_chunks = torch.cat([model(ids[:, a:b], chunked) for a, b in cuts], dim=1)
        one_by_one = torch.cat([model(ids[:, t:t + 1], single) for t in range(length)], dim=1)
    for steps in (in_chunks, one_by_one):
        _close(steps, full)
    assert chunked.length == single.length == length
    state = single.layers[0]
    assert isinstance(state, SSMState) and not state.rewindable
    assert state.ssm is not None and state.conv is not None
    assert state.ssm.dtype == state.conv.dtype == torch.float32
    assert tuple(state.ssm.shape) == (2, 8, 16, 16) and tuple(state.conv.shape) == (2, 128 + 2 * 2 * 16, 3)


def test_the_state_is_float32_in_a_bfloat16_model(tiny_model) -> None:
    model = tfb.load(tiny_model("mamba2", "f32")[1], dtype=torch.bfloat16)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids_for(320, 1, 9), cache)
    assert cache.layers[1].ssm.dtype == cache.layers[1].conv.dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers_generate(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    assert_greedy_equals_transformers(model, reference, 20, vocab=320)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_session_goes_back_to_a_snapshot(tiny_model, family: str) -> None:
    """A chat over recurrent layers: a prompt extending the history computes only its new tokens, an edited
    turn goes back to the snapshot after the previous prompt (attention layers truncated to it); each reply
    equals a fresh generation."""
    model = tfb.load(tiny_model(family, "f32")[1])
    session = Session(model.new_cache())
    first = [5, 17, 33, 2, 90, 41]
    reply = list(generate_ids(model, first, max_tokens=6, session=session))
    assert len(session.snapshots) == 1 and session.snapshots[0].length == len(first)
    follow = first + reply + [7, 8]
    assert list(generate_ids(model, follow, max_tokens=6, session=session)) == \
        list(generate_ids(model, follow, max_tokens=6))
    assert session.snapshots[-1].length == len(follow)
    edited = [*first, 99, 98, 97]  # shares the first prompt only: back to its snapshot
    assert session.reuse(edited) == len(first) and session.cache.length == len(first)
    session.tokens = first[:]  # as before the edit: generate_ids reuses the prefix again
    assert list(generate_ids(model, edited, max_tokens=6, session=session)) == \
        list(generate_ids(model, edited, max_tokens=6))
    other = [3, 1, 4, 1, 5]  # nothing shared: the empty cache
    assert list(generate_ids(model, other, max_tokens=4, session=session)) == \
        list(generate_ids(model, other, max_tokens=4))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    with GGUFFile(path) as gguf:
        types = {name: info.ggml_type.name for name, info in gguf.tensors.items()}
    for name, kind in types.items():
        if ".ssm_in." in name or ".ssm_out." in name:
            assert kind == outtype.upper(), name
        elif ".ssm_" in name or "_norm" in name:  # conv weights and bias, dt bias, A, D, norms
            assert kind == "F32", name
    model = tfb.load(path)
    assert isinstance(model.blocks[0].mixer.in_proj.packed, PackedTensor)  # kept in its blocks
    compare(model, reference, SHAPES[:3])


def _with(path: Path, out: Path, **values: int) -> Path:
    return rewrite(path, out, {f"mamba2.ssm.{k}": (v, GGUFValueType.UINT32) for k, v in values.items()})


BAD = {
    "heads_not_dividing_inner": ({"time_step_rank": 3}, "ssm_inner_size = 128 does not split into ssm_head_count = 3"),
    "groups_not_dividing_heads": ({"group_count": 3}, "ssm_head_count = 8 is not a multiple of ssm_group_count = 3"),
    "conv_kernel_zero": ({"conv_kernel": 0}, "ssm_conv_kernel = 0 must be positive"),
    "state_size_zero": ({"state_size": 0}, "ssm_state_size = 0 must be positive"),
    "group_count_zero": ({"group_count": 0}, "ssm_group_count = 0 must be positive"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sizes_are_refused_naming_the_key(tiny_model, tmp_path: Path, case: str) -> None:
    values, message = BAD[case]
    with pytest.raises(ConfigError, match=message):
        tfb.load(_with(tiny_model("mamba2", "f32")[1], tmp_path / "bad.gguf", **values))


def test_a_state_size_the_tensors_disagree_with_names_the_tensor(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(WeightError, match=r"blk\.0\.ssm_in\.weight"):
        tfb.load(_with(tiny_model("mamba2", "f32")[1], tmp_path / "bad.gguf", state_size=24))


def test_an_attention_model_without_heads_is_still_refused(tiny_model, tmp_path: Path) -> None:
    """head_count 0 is a model without attention, not a way past the attention kind's checks."""
    bad = rewrite(tiny_model("llama", "f32")[1], tmp_path / "bad.gguf",
                  {"llama.attention.head_count": (0, GGUFValueType.UINT32)})
    with pytest.raises(ConfigError, match="must be positive in an attention layer"):
        tfb.load(bad)
