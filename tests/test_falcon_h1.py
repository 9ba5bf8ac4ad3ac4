"""Falcon-H1 (the falcon-h1 spec: a `parallel` mixer of attention and Mamba-2 (ssd) in every layer, then a SwiGLU
MLP), verified like the other families: tiny random FalconH1ForCausalLM models, every multiplier away from 1,
through llama.cpp's own converter (which folds the multipliers into the weights) -> tfb's logits against
transformers' float32 logits at every position and against llama.cpp's; decoding with the per-branch state (in
chunks and token by token) against the full forward; a Session going back to a snapshot; Q8_0 and Q4_0 files;
the gated norm present (mamba_rms_norm) or absent; tied embeddings; bad sizes and bad parallel sections refused
with one clear message."""

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
)
from gguf import GGUFValueType
from llama_reference import llama_cpp_logits
from test_check import rewrite

import tfb
from tfb.authoring.check import check
from tfb.errors import ConfigError, SpecError
from tfb.gguf.reader import GGUFFile
from tfb.nn.cache import SequenceState
from tfb.nn.mixers.attention import Attention
from tfb.nn.mixers.parallel import ParallelMixer, ParallelState
from tfb.nn.mixers.ssd import CHUNK, SSDLayer, SSMState
from tfb.quant import PackedTensor
from tfb.spec import load_spec
from tfb.text.generate import Session, generate_ids

SHAPES = [(1, 1), (2, 1), (2, 40), (1, CHUNK + 13)]
FAMILIES = ["falcon_h1", "falcon_h1_no_norm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    for block in model.blocks:
        mixer = block.mixer
        assert isinstance(mixer, ParallelMixer) and mixer.scales == [1.0, 1.0]  # the converter folded them
        attention, ssd = mixer.branches
        assert isinstance(attention, Attention) and isinstance(ssd, SSDLayer)
        assert (ssd.norm.weight is not None) == (family == "falcon_h1")  # the file has ssm_norm or not
        assert block.ffn is not None and block.ffn_norm is not None
    s = model.blocks[0].mixer.branches[1].shape
    assert (s.heads, s.head_dim, s.groups, s.state, s.kernel, s.inner) == (8, 16, 2, 16, 4, 128)
    compare(model, reference, SHAPES)


def test_tied_embeddings_carry_the_embedding_multiplier(tiny_model) -> None:
    """llama.cpp's output is token_embd, into which the converter folded embedding_multiplier (2), and no
    lm_head_multiplier (0.5): its logits are transformers' times 2 / 0.5 (docs/llama-cpp-vs-transformers.md)."""
    reference, path = tiny_model("falcon_h1_tied", "f32")
    model = tfb.load(path)
    with GGUFFile(path) as gguf:
        assert "output.weight" not in gguf.tensors
    ids = ids_for(320, 2, 20)
    with torch.no_grad():
        assert_logits_match(model(ids), reference(ids).logits * 4.0)
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_spec_fits_the_converted_files(tiny_model, family: str) -> None:
    report = check(tiny_model(family, "f32")[1])
    assert report.ok, "\n".join(report.lines())
    per_layer = 4 + 7 + 3 + 2 + (family == "falcon_h1")  # q k v o, 7 ssm, 3 ffn, 2 norms, ssm_norm
    assert report.tensors_checked == 2 * per_layer + 3


def test_logits_match_llama_cpp(tiny_model) -> None:
    path = tiny_model("falcon_h1", "f32")[1]
    ids = ids_for(320, 2, 40)
    with torch.no_grad():
        assert_logits_match(tfb.load(path)(ids), llama_cpp_logits(path, ids), 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_with_the_state_equals_the_full_forward(tiny_model, family: str) -> None:
    model = tfb.load(tiny_model(family, "f32")[1])
    chunked, single = assert_decoding_equals_full(model, CHUNK + 36)  # the prompt chunk crosses a scan chunk
    assert chunked.length == single.length == CHUNK + 36 and not single.rewindable
    state = single.layers[0]
    assert isinstance(state, ParallelState) and not state.rewindable
    keys, ssm = state.parts
    assert isinstance(keys, SequenceState) and isinstance(ssm, SSMState)
    assert ssm.ssm is not None and ssm.ssm.dtype == torch.float32 and tuple(ssm.ssm.shape) == (2, 8, 16, 16)


def test_the_state_copy_is_independent(tiny_model) -> None:
    """A snapshot's copy of the recurrent part does not move when decoding goes on."""
    model = tfb.load(tiny_model("falcon_h1", "f32")[1])
    cache = model.new_cache()
    with torch.no_grad():
        model(ids_for(320, 1, 9), cache)
        saved = cache.snapshot()
        before = saved.saved[0].parts[1].ssm.clone()
        model(ids_for(320, 1, 3), cache)
    assert torch.equal(saved.saved[0].parts[1].ssm, before)
    assert not torch.equal(cache.layers[0].parts[1].ssm, before)


def test_greedy_equals_transformers_generate(tiny_model) -> None:
    reference, path = tiny_model("falcon_h1", "f32")
    model = tfb.load(path)
    assert_greedy_equals_transformers(model, reference, 12, vocab=320)


def test_a_session_goes_back_to_a_snapshot(tiny_model) -> None:
    """An edited turn goes back to the snapshot after the previous prompt (the attention branch's keys and values
    shared, the SSM branch's state copied); each reply equals a fresh generation."""
    model = tfb.load(tiny_model("falcon_h1", "f32")[1])
    session = Session(model.new_cache())
    first = [5, 17, 33, 2, 90, 41]
    reply = list(generate_ids(model, first, max_tokens=6, session=session))
    follow = first + reply + [7, 8]
    assert list(generate_ids(model, follow, max_tokens=6, session=session)) == \
        list(generate_ids(model, follow, max_tokens=6))
    edited = [*first, 99, 98, 97]
    assert session.reuse(edited) == len(first) and session.cache.length == len(first)
    session.tokens = first[:]
    assert list(generate_ids(model, edited, max_tokens=6, session=session)) == \
        list(generate_ids(model, edited, max_tokens=6))


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantized_files(tiny_model, outtype: str) -> None:
    """The projections quantized, the conv weights, A, D and norms F32 (the converter's and llama-quantize's
    rule), kept packed."""
    reference, path = tiny_model("falcon_h1", outtype)
    with GGUFFile(path) as gguf:
        types = {name: info.ggml_type.name for name, info in gguf.tensors.items()}
    for name, kind in types.items():
        if name.endswith(("ssm_in.weight", "ssm_out.weight", "attn_q.weight", "ffn_down.weight")):
            assert kind == outtype.upper(), name
        elif ".ssm_" in name or "norm" in name:
            assert kind == "F32", name
    model = tfb.load(path)
    attention, ssd = model.blocks[0].mixer.branches
    assert isinstance(ssd.in_proj.packed, PackedTensor) and isinstance(attention.q.packed, PackedTensor)
    compare(model, reference, SHAPES[:3])


def test_bad_ssm_sizes_are_refused_naming_the_key(tiny_model, tmp_path: Path) -> None:
    bad = rewrite(tiny_model("falcon_h1", "f32")[1], tmp_path / "bad.gguf",
                  {"falcon-h1.ssm.time_step_rank": (3, GGUFValueType.UINT32)})
    with pytest.raises(ConfigError, match="ssm_inner_size = 128 does not split into ssm_head_count = 3 .*"
                       r"\(the ssd branch of a parallel mixer\)"):
        tfb.load(bad)


def _spec(tmp_path: Path, mixer: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(f"extends: falcon-h1\nmatch: []\nmixer:\n{mixer}")
    return path


BRANCH_A = "    - {kind: attention, bias: optional, rope: {pairing: half}}\n"
BRANCH_S = "    - {kind: ssd, conv_bias: optional, norm: optional}\n"
BAD_SECTIONS = {
    "one_branch": ("  kind: parallel\n  branches:\n" + BRANCH_A, "two or more branches"),
    "same_slots": ("  kind: parallel\n  branches:\n" + BRANCH_S + BRANCH_S, "both read tensor slot ssm_in"),
    "branch_layers": ("  kind: parallel\n  branches:\n    - {kind: attention, layers: none}\n" + BRANCH_S,
                      "give `layers:` on the parallel section instead"),
    "scale_not_a_field": ("  kind: parallel\n  scales: [null, ssm_scael]\n  branches:\n" + BRANCH_A + BRANCH_S,
                          "`ssm_scael` is not a numeric config field"),
    "scales_count": ("  kind: parallel\n  scales: [null]\n  branches:\n" + BRANCH_A + BRANCH_S,
                     "1 scales for 2 branches"),
    "nested": ("  kind: parallel\n  branches:\n    - {kind: parallel, branches: [{kind: attention}, {kind: ssd}]}\n"
               + BRANCH_A, "a branch cannot itself be parallel"),
    "unknown_branch_key": ("  kind: parallel\n  branches:\n    - {kind: ssd, nrom: optional}\n" + BRANCH_A, "nrom"),
}


@pytest.mark.parametrize("case", BAD_SECTIONS)
def test_bad_parallel_sections_are_refused(tmp_path: Path, case: str) -> None:
    mixer, message = BAD_SECTIONS[case]
    with pytest.raises(SpecError) as info:
        load_spec(_spec(tmp_path, mixer))
    assert message in str(info.value) and "Traceback" not in str(info.value)


def test_branch_scales_multiply_the_branch_outputs(tiny_model, tmp_path: Path) -> None:
    """scales: [null, F] gives attention(x) + F * ssd(x) (F a config field: here a constant of the spec)."""
    path = tiny_model("falcon_h1", "f32")[1]
    spec = _spec(tmp_path, "  kind: parallel\n  scales: [null, expert_weights_scale]\n  branches:\n" + BRANCH_A +
                 BRANCH_S)
    spec.write_text(spec.read_text() + "hparams: {expert_weights_scale: 0.25}\n")
    scaled = tfb.load(path, spec=load_spec(spec))
    mixer = scaled.blocks[0].mixer
    assert mixer.scales == [1.0, 0.25]
    x = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        step = tfb.nn.cache.Step(torch.arange(7)[None], 0)
        expected = mixer.branches[0](x, step, None) + 0.25 * mixer.branches[1](x, step, None)
        torch.testing.assert_close(mixer(x, step, None), expected)
