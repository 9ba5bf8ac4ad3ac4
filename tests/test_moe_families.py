"""The expert families qwen2moe, olmoe, granitemoe, ernie4_5-moe and glm4moe, verified like the seed families:
tiny random transformers model -> llama.cpp's own converter -> tfb's logits against transformers' float32 logits
at every position (and against llama.cpp's own logits on the same files), KV-cache decoding against the full
forward, and quantized files (stacked and shared experts quantized, routers F32 as llama.cpp keeps them). Then
the generic switches these families brought: layer rules with several conditions, tensors stored with extra
dimensions of 1, a `difference` rule, and tensors a spec leaves unread on purpose (GLM-4.5's
next-token-prediction blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import assert_decoding_equals_full, assert_logits_match, compare, ids_for, record_routes
from llama_reference import llama_cpp_logits

import tfb
from tfb.build import same_shape
from tfb.errors import SpecError, TfbWarning
from tfb.gguf.reader import GGUFFile
from tfb.nn.ffn.routed import Experts
from tfb.quant import PackedTensor
from tfb.spec.base import LayerRule, selects
from tfb.spec.loader import load_spec
from tfb.spec.schema import Tensors

FAMILIES = ["qwen2moe", "olmoe", "granitemoe", "granitemoe_shared", "ernie4_5_moe", "ernie4_5_moe_interleaved",
            "glm4moe"]
QUANTIZED = [(family, outtype) for family in ("qwen2moe", "olmoe", "granitemoe", "ernie4_5_moe", "glm4moe")
             for outtype in ("q8_0", "q4_0")]
SHAPES = [(1, 1), (3, 1), (2, 40)]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    compare(tfb.load(path), reference, SHAPES)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "ernie4_5_moe_interleaved"])
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same files (tests/llama_reference.py; float32, where only the order of sums
    differs): glm4moe's file loads there with its next-token-prediction block skipped, as here."""
    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), 1e-4)


def test_llama_cpp_refuses_interleaved_ernie_files(tiny_model) -> None:
    """llama.cpp's ERNIE loader wants expert tensors in every layer from the first routed one on, although its
    graph routes only every moe_layer_step-th layer; tfb follows the graph (and transformers, above)."""
    _, path = tiny_model("ernie4_5_moe_interleaved", "f32")
    with pytest.raises(RuntimeError, match=r"blk\.2\.ffn_gate_inp\.weight"):
        llama_cpp_logits(path, ids_for(320, 1, 4))


@pytest.mark.parametrize(("family", "outtype"), QUANTIZED)
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    with GGUFFile(path) as gguf:
        types = {name: info.ggml_type.name for name, info in gguf.tensors.items()}
    experts = [name for name in types if "_exps." in name or ("_shexp." in name and "gate_inp" not in name)]
    routers = [name for name in types if ".ffn_gate_inp" in name]
    assert experts and all(types[name] == outtype.upper() for name in experts)
    assert routers and all(types[name] == "F32" for name in routers)
    model = tfb.load(path)
    moe = next(b.ffn for b in model.blocks if isinstance(b.ffn, Experts))
    assert isinstance(moe.down.weight, PackedTensor)  # the experts stay in their blocks
    compare(model, reference, SHAPES)


@pytest.mark.parametrize("family", ["qwen2moe", "olmoe", "granitemoe_shared", "ernie4_5_moe", "glm4moe"])
def test_kv_cache_decoding_equals_the_full_forward(tiny_model, family: str) -> None:
    chunked, single = assert_decoding_equals_full(tfb.load(tiny_model(family, "f32")[1]))
    assert chunked.length == single.length == 30


def _experts(model: torch.nn.Module) -> list[Experts | None]:
    return [b.ffn if isinstance(b.ffn, Experts) else None for b in model.blocks]  # type: ignore[attr-defined]


def test_what_the_files_exercise(tiny_model) -> None:
    """The tiny models use what their specs describe, so that agreement above means something."""
    qwen = _experts(tfb.load(tiny_model("qwen2moe", "f32")[1]))
    for moe in qwen:
        assert moe is not None and moe.shared is not None and moe.shared_gated and not moe.normalize
        assert moe.shared_gate is not None and moe.shared_gate.shape == (64,)  # stored [1, 64] in the file
    olmoe = tfb.load(tiny_model("olmoe", "f32")[1])
    assert olmoe.blocks[0].mixer.q_norm.weight.shape == (64,)  # one norm over all heads
    assert all(m is not None and m.shared is None and not m.normalize for m in _experts(olmoe))
    assert all(m is not None and m.shared is None and m.normalize
               for m in _experts(tfb.load(tiny_model("granitemoe", "f32")[1])))
    assert all(m is not None and m.shared is not None and not m.shared_gated
               for m in _experts(tfb.load(tiny_model("granitemoe_shared", "f32")[1])))
    ernie = _experts(tfb.load(tiny_model("ernie4_5_moe", "f32")[1]))
    assert ernie[0] is None and ernie[1] is not None and ernie[1].shared is not None and ernie[1].normalize
    assert ernie[1].selection_bias is not None and ernie[1].selection_bias.shape == (8,)  # stored [1, 8]
    interleaved = _experts(tfb.load(tiny_model("ernie4_5_moe_interleaved", "f32")[1]))
    assert [m is not None for m in interleaved] == [False, True, False, True]
    assert all(m.shared is None for m in interleaved if m is not None)
    glm = tfb.load(tiny_model("glm4moe", "f32")[1])
    c = glm.config
    assert (c.block_count, c.nextn_predict_layers, c.n_layers, len(glm.blocks)) == (4, 1, 3, 3)
    assert c.rope_dims == 12 < c.head_dim
    moes = _experts(glm)
    assert moes[0] is None
    for moe in moes[1:]:
        assert moe is not None and moe.gating == "sigmoid" and moe.selection_bias is not None
        assert (moe.groups, moe.groups_used, moe.scale, moe.normalize) == (2, 1, 2.5, True) and moe.shared is not None


def test_grouped_selection_keeps_each_token_in_its_best_group(tiny_model) -> None:
    """GLM's 8 experts are 2 groups of 4, one kept: every token's 3 experts share a group, and both groups serve."""
    reference, path = tiny_model("glm4moe", "f32")
    model = tfb.load(path)
    chosen = record_routes([moe for moe in _experts(model) if moe is not None])
    compare(model, reference, [(2, 40)])
    groups = torch.cat(chosen) // 4
    assert (groups == groups[:, :1]).all() and groups.unique().tolist() == [0, 1]


def test_next_token_prediction_blocks_are_left_unread_as_the_spec_says(tiny_model, tmp_path: Path) -> None:
    """Without its `tensors.unread` pattern the glm4moe spec would leave the MTP block's tensors unread: the
    load names them (a warning, an error in these tests)."""
    _, path = tiny_model("glm4moe", "f32")
    tfb.load(path)  # no warning: the file's blk.3 is the next-token-prediction block
    bare = tmp_path / "glm4moe_bare.yaml"
    bare.write_text("extends: glm4moe\nmatch: [glm4moe]\ntensors: {unread: []}\n")
    with pytest.raises(TfbWarning, match=r"reads no tensor named blk\.3\."):
        tfb.load(path, spec=str(bare))


def test_check_notes_the_tensors_left_unread(tiny_model) -> None:
    """`tfb check` passes the glm4moe file and says what it leaves out, and where the spec says so."""
    from tfb.authoring.check import check

    report = check(tiny_model("glm4moe", "f32")[1])
    assert not [f for f in report.findings if f.severity == "error"]
    notes = [f for f in report.findings if f.subject == "tensors"]
    assert len(notes) == 1 and "glm4moe.yaml:" in notes[0].where  # the line of tensors.unread
    assert notes[0].message == "23 left unread as the spec says (tensors.unread): in block(s) 3"


def test_unread_patterns_match_only_blocks_past_the_model() -> None:
    t = Tensors(unread=["blk.{i}.*", "mtp.*.weight"])
    assert t.left_unread("blk.3.attn_q.weight", 3) and t.left_unread("blk.12.nextn.eh_proj.weight", 3)
    assert not t.left_unread("blk.2.attn_q.weight", 3)  # a built layer's tensor is never hidden
    assert not t.left_unread("blk.x.attn_q.weight", 3) and not t.left_unread("token_embd.weight", 3)
    assert t.left_unread("mtp.head.weight", 3) and not t.left_unread("mtp.head.bias", 3)


@pytest.mark.parametrize("pattern", ["blk.{n}.x", "*", "{i}", "blk.}.x"])
def test_unread_patterns_with_other_wildcards_are_refused(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(f"extends: llama\nmatch: [x]\ntensors:\n  unread: [{pattern!r}]\n")
    with pytest.raises(SpecError, match=r"tensors\.unread"):
        load_spec(str(path))


def test_stored_extra_dimensions_of_one() -> None:
    """As llama.cpp: extra ggml dimensions of 1 (leading in torch order) fit; anything else does not."""
    assert same_shape((1, 64), (64,)) and same_shape((1, 1, 8), (8,)) and same_shape((8, 64), (8, 64))
    assert not same_shape((64, 1), (64,)) and not same_shape((2, 64), (64,)) and not same_shape((64,), (1, 64))


def test_layer_rules_with_several_conditions() -> None:
    fields = {"lead": 1, "step": 2, "shared": (0, 64, 64, 0, 64, 64)}

    def on(rule: LayerRule) -> list[bool]:
        return [selects(rule, i, lambda f, layer: fields[f][layer] if isinstance(fields[f], tuple)  # type: ignore[index]
                        else fields[f]) for i in range(6)]

    assert on(LayerRule(every="step", nonzero="shared")) == [False, True, False, False, False, True]
    assert on(LayerRule(every="step", zero="shared")) == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="one or more of"):
        LayerRule()


def test_each_condition_of_a_layer_rule_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("extends: llama\nmatch: [x]\nffn:\n  - {kind: routed, layers: {every: moe_layer_step, "
                    "nonzero: expert_shared_sise}}\n  - {kind: dense}\n")
    with pytest.raises(SpecError, match=r"ffn\.0\.layers\.nonzero: `expert_shared_sise` is not a config field"):
        load_spec(str(path))


def test_a_difference_rule_that_leaves_no_layer(tiny_model, tmp_path: Path) -> None:
    """glm4moe's n_layers = block_count - nextn_predict_layers (4 - 1 above); nothing left is refused."""
    from tfb.errors import ConfigError

    _, path = tiny_model("glm4moe", "f32")
    spec = tmp_path / "glm4moe_none.yaml"
    spec.write_text("extends: glm4moe\nmatch: [glm4moe]\nhparams:\n  nextn_predict_layers: {key: null, default: 4}\n")
    with pytest.raises(ConfigError, match=r"`n_layers` = 0 \(derived\) must be positive"):
        tfb.load(path, spec=str(spec))
