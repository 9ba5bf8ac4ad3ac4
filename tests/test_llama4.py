"""Llama 4 (text): the spec against transformers' Llama4ForCausalLM on the tiny model, and each attention switch it
brought (chunked layers, the query temperature with an offset on the layers without rope, a Q/K norm after rope,
with or without weights, on the rope layers only) against attention written out here.

llama.cpp hard-codes Llama 4's chunk (8192) and temperature floor (8192), which no file carries; the packaged spec
states them as data. The tiny model uses 8 and 8 so that 40 tokens cross both: the tests load its file with a
spec that extends the packaged one and overrides those two constants, as a user spec would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from compare import assert_logits_match, compare, ids_for
from llama_reference import llama_cpp_logits

import tfb
import tfb.quant.native as native
from tfb.config import ModelConfig
from tfb.errors import SpecError
from tfb.gguf.reader import MetaValue
from tfb.hparams import build_config
from tfb.nn.cache import SequenceState, Step
from tfb.nn.ffn.routed import Experts
from tfb.nn.kinds import BuildContext
from tfb.nn.mixers.attention import Attention, AttentionOptions, AttentionShape, build
from tfb.nn.mlp import MLP
from tfb.nn.rotary import RopeParams, Rotary
from tfb.spec import load_spec
from tfb.spec.kinds.attention import Attention as Section

TINY_SPEC = """\
extends: llama4
description: Llama 4 with the constants of the tiny test model (tests/tiny_hf.py)
match: [llama4]

hparams:
  attention_chunk_size: 8       # transformers' attention_chunk_size
  attn_temperature_length: 8    # transformers' floor_scale
"""
SHAPES = [(1, 1), (2, 1), (2, 7), (2, 17), (2, 40)]  # 40 tokens: five chunks, temperature steps 1 to 5


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama4-spec") / "llama4-tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


# ------------------------------------------------------------------------------ the model against transformers


def test_logits_match_transformers_on_every_position(tiny_model, tiny_spec: Path) -> None:
    reference, path = tiny_model("llama4", "f32")
    compare(tfb.load(path, spec=tiny_spec), reference, SHAPES)


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantized_files(tiny_model, tiny_spec: Path, outtype: str) -> None:
    """Q8_0 from the converter itself, Q4_0 requantized; the reference holds the same rounded weights."""
    reference, path = tiny_model("llama4", outtype)
    model = tfb.load(path, spec=tiny_spec)
    assert type(model.blocks[1].ffn.up.weight).__name__ == "PackedTensor"  # the experts stay quantized
    compare(model, reference, SHAPES)


def test_the_file_builds_what_the_spec_says(tiny_model, tiny_spec: Path) -> None:
    model = tfb.load(tiny_model("llama4", "f32")[1], spec=tiny_spec)
    opts = [b.mixer.opts for b in model.blocks]
    assert [o.chunk for o in opts] == [8, 8, 8, 0]
    assert [o.use_rope for o in opts] == [True, True, True, False]
    assert [o.qk_norm for o in opts] == ["rmsnorm", "rmsnorm", "rmsnorm", None]
    assert all(o.qk_norm_after_rope for o in opts[:3])
    assert model.blocks[0].mixer.q_norm.weight is None  # no weights: x / rms(x)
    assert [o.temperature_scale for o in opts] == [0.0, 0.0, 0.0, 0.1]
    assert (opts[3].temperature_length, opts[3].temperature_offset) == (8, 1.0)
    ffns = [b.ffn for b in model.blocks]
    assert [type(f) for f in ffns] == [MLP, Experts, MLP, Experts]
    moe = ffns[1]
    assert isinstance(moe, Experts)
    assert (moe.gating, moe.top_k, moe.weights_on_input, moe.normalize, moe.scale) == ("sigmoid", 1, True, False, 0.0)
    assert moe.shared is not None and moe.shared.up.out_features == 32  # as wide as one expert


def test_the_packaged_spec_keeps_llama_cpps_constants(tiny_model) -> None:
    """With llama.cpp's 8192s the tiny model's chunks and temperature steps never happen: the logits agree with
    transformers' (chunk 8, floor 8) up to position 6 and differ from position 7 on (the first temperature step
    at (7 + 1) / 8 = 1, then the second chunk). So the override above is what the agreement tests."""
    reference, path = tiny_model("llama4", "f32")
    model = tfb.load(path)
    c = model.config
    assert (c.attention_chunk_size, c.attn_temperature_length, c.attn_temperature_scale,
            c.attn_temperature_offset, c.use_qk_norm) == (8192, 8192, 0.1, 1.0, 1)
    ids = ids_for(c.vocab_size, 2, 40)
    with torch.no_grad():
        ours, theirs = model(ids), reference(ids).logits
    assert_logits_match(ours[:, :7], theirs[:, :7])
    scale = theirs.abs().max().item()
    assert ((ours[:, 7:] - theirs[:, 7:]).abs().amax(dim=(0, 2)) > 1e-3 * scale).all()


def test_the_packaged_spec_matches_llama_cpp(tiny_model) -> None:
    """llama.cpp itself on the same file (its own constants: nothing chunked or tempered before position 8191;
    the experts, the Q/K norm, rope with the llama3 factors and the no-rope layer are all there)."""
    _, path = tiny_model("llama4", "f32")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        ours = model(ids)
    assert_logits_match(ours, llama_cpp_logits(path, ids), 1e-4)


@pytest.mark.parametrize("native_attention", [True, False])
def test_kv_cache_decoding_equals_the_full_forward(tiny_model, tiny_spec: Path, native_attention: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One token at a time (the native single-query kernel, which sees only the query's chunk; or torch with the
    chunk mask) and a prompt in pieces that start and end inside chunks."""
    if not native_attention:
        monkeypatch.setattr(native, "attend", lambda *a, **kw: None)
    model = tfb.load(tiny_model("llama4", "f32")[1], spec=tiny_spec)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        full = model(ids)
        for pieces in ([(i, i + 1) for i in range(40)], [(0, 5), (5, 13), (13, 14), (14, 27), (27, 40)]):
            cache = model.new_cache()
            steps = torch.cat([model(ids[:, a:b], cache) for a, b in pieces], dim=1)
            torch.testing.assert_close(steps, full, atol=1e-4 * full.abs().max().item(), rtol=0)
            assert cache.length == 40


# ------------------------------------------------------------------------------------ the spec's data


def _metadata(**extra: object) -> dict[str, MetaValue]:
    values = {"llama4.context_length": 8192, "llama4.embedding_length": 64, "llama4.block_count": 4,
              "llama4.feed_forward_length": 96, "llama4.attention.head_count": 4,
              "llama4.attention.head_count_kv": 2, "llama4.attention.layer_norm_rms_epsilon": 1e-5,
              "llama4.vocab_size": 100, "llama4.expert_count": 16, "llama4.expert_used_count": 1,
              "llama4.expert_feed_forward_length": 32, "llama4.interleave_moe_layer_step": 2, **extra}
    return {k: MetaValue(v, "float32" if isinstance(v, float) else "uint32") for k, v in values.items()}


def _config(**extra: object) -> ModelConfig:
    return build_config(load_spec("llama4"), _metadata(**extra), set(), arch="llama4", where="x.gguf")


def test_file_facts_llama_cpp_reads_into_the_constants() -> None:
    assert _config().attention_chunk_size == 8192
    # the converter writes sliding_window = 0 only when every layer is global: llama.cpp then chunks nothing
    assert _config(**{"llama4.attention.sliding_window": 0}).attention_chunk_size == 0
    assert _config(**{"llama4.attention.sliding_window": 4096}).attention_chunk_size == 8192  # value ignored
    # the 128-expert model (Maverick) has no Q/K norm: llama.cpp infers it from the expert count
    assert _config().use_qk_norm == 1 and _config(**{"llama4.expert_count": 128}).use_qk_norm == 0
    assert _config().moe_layer_step == 2 and _config().expert_shared_intermediate_size == 32


def test_each_layer_takes_its_switches_from_the_spec() -> None:
    """chunks, rope, temperature and Q/K norm per layer as the packaged spec says, for the 16- and 128-expert
    files; a section's temperature on every layer stays the default (Mistral 3)."""
    section = load_spec("llama4").mixer[0]
    assert isinstance(section, Section)

    def options(config: ModelConfig) -> list[AttentionOptions]:
        return [build(section, config.layer(i), BuildContext("rmsnorm", 0.0, i)).opts for i in range(8)]

    scout = options(_config(**{"llama4.block_count": 8}))
    assert [o.chunk for o in scout] == [8192, 8192, 8192, 0] * 2
    assert [o.use_rope for o in scout] == [True, True, True, False] * 2
    assert [o.qk_norm for o in scout] == ["rmsnorm", "rmsnorm", "rmsnorm", None] * 2
    assert [o.temperature_scale for o in scout] == [0.0, 0.0, 0.0, 0.1] * 2
    maverick = options(_config(**{"llama4.block_count": 8, "llama4.expert_count": 128}))
    assert [o.qk_norm for o in maverick] == [None] * 8
    everywhere = section.model_copy(update={"temperature": "all"})
    c = _config()
    assert [build(everywhere, c, BuildContext("rmsnorm", 0.0, i)).opts.temperature_scale for i in range(4)] == [0.1] * 4


def test_contradicting_qk_norm_settings_are_named(tmp_path: Path) -> None:
    def error(mixer: str) -> str:
        path = tmp_path / "x.yaml"
        path.write_text(f"extends: llama4\nmatch: [x]\nmixer: {mixer}\n")
        with pytest.raises(SpecError) as info:
            load_spec(path)
        return str(info.value)

    assert "mixer.qk_norm.layers: a Q/K norm with weight tensors applies on every layer of its section" in \
        error("{qk_norm: {parametric: true, layers: rope}}")
    assert "mixer.qk_norm.presence: a Q/K norm without weights has no tensors that could be present" in \
        error("{qk_norm: {presence: optional}}")
    assert "mixer.chunked: an empty list of layers" in error("{chunked: []}")
    weighted = Section.model_validate({"qk_norm": {"kind": "rmsnorm"}})
    problem = weighted.check(_config(**{"llama4.expert_count": 128}))
    assert problem is not None and "use_qk_norm = 0 turns off only a Q/K norm without weights" in problem


# --------------------------------------------------------------------- each switch against written-out attention

GEN = torch.Generator().manual_seed(16)
HEADS, KV_HEADS, DIM = 4, 2, 8


def _randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * scale


def _attention(**opts: Any) -> Attention:
    shape = AttentionShape(hidden=16, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=DIM, value_dim=DIM)
    base: dict[str, Any] = dict(fused_qkv=False, qk_norm=None, qk_norm_over="head", norm_eps=1e-5, scale=DIM ** -0.5,
                                softcap=0.0, clamp=0.0, window=0, use_rope=False, sinks=False, temperature_scale=0.0,
                                temperature_length=1)
    config = ModelConfig(architecture="x", vocab_size=10, hidden_size=16, n_layers=1, n_heads=HEADS,
                         n_kv_heads=KV_HEADS, head_dim=DIM, value_dim=DIM, intermediate_size=8, context_length=64,
                         norm_eps=1e-5, attention_scale=DIM ** -0.5, rope_dims=DIM, rope_original_context=64)
    rotary = Rotary(RopeParams.from_config(config, "adjacent"))
    attn = Attention(shape, AttentionOptions(**{**base, **opts}), BuildContext("rmsnorm", 0.0, 0), rotary)
    for name, out in (("q", HEADS * DIM), ("k", KV_HEADS * DIM), ("v", KV_HEADS * DIM)):
        getattr(attn, name).set_weight(name, _randn(out, 16, scale=0.5))
    attn.o.set_weight("o", _randn(16, HEADS * DIM, scale=0.5))
    return attn


def _rope(x: torch.Tensor, pos: int) -> torch.Tensor:
    """GGML's normal rope on one head: pairs (x0, x1), (x2, x3)... turned by pos * 10000^(-2i/d)."""
    out = x.clone()
    for i in range(DIM // 2):
        angle = pos * 10000.0 ** (-2 * i / DIM)
        c, s = math.cos(angle), math.sin(angle)
        out[2 * i], out[2 * i + 1] = x[2 * i] * c - x[2 * i + 1] * s, x[2 * i] * s + x[2 * i + 1] * c
    return out


def _reference(attn: Attention, x: torch.Tensor, *, chunk: int = 0, window: int = 0, temperature: tuple = (),
               rope: bool = False, norm: tuple | None = None) -> torch.Tensor:
    """Attention written out per token and head: rope, the temperature (scale, length, offset) on q, then the
    Q/K RMS norm (q weight, k weight; None: no weights) after rope; key j visible to query p iff j <= p, p - j <
    window (when set) and j // chunk == p // chunk (when set)."""
    b, t, _ = x.shape
    q = (x @ attn.q.weight.T).view(b, t, HEADS, DIM)  # type: ignore[union-attr]
    k = (x @ attn.k.weight.T).view(b, t, KV_HEADS, DIM)  # type: ignore[union-attr]
    v = (x @ attn.v.weight.T).view(b, t, KV_HEADS, DIM)  # type: ignore[union-attr]

    def prepared(z: torch.Tensor, pos: int, is_query: bool, weight: torch.Tensor | None) -> torch.Tensor:
        if rope:
            z = _rope(z, pos)
        if temperature and is_query:
            s, length, offset = temperature
            z = z * (1 + s * math.log(math.floor((pos + offset) / length) + 1))
        if norm is not None:
            z = z / torch.sqrt(z.pow(2).mean() + 1e-5)
            z = z if weight is None else z * weight
        return z

    q_weight, k_weight = norm if norm is not None else (None, None)
    out = torch.zeros(b, t, HEADS, DIM)
    for bi in range(b):
        for p in range(t):
            for h in range(HEADS):
                g = h // (HEADS // KV_HEADS)
                keys = [j for j in range(p + 1) if (not window or p - j < window) and (not chunk or
                                                                                    j // chunk == p // chunk)]
                qp = prepared(q[bi, p, h], p, True, q_weight)
                scores = torch.stack([qp @ prepared(k[bi, j, g], j, False, k_weight) for j in keys]) * DIM ** -0.5
                probs = torch.softmax(scores, dim=0)
                out[bi, p, h] = sum(probs[i] * v[bi, j, g] for i, j in enumerate(keys))
    return out.reshape(b, t, HEADS * DIM) @ attn.o.weight.T  # type: ignore[union-attr]


CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "chunks": (dict(chunk=3), dict(chunk=3)),
    "chunks and a window": (dict(chunk=4, window=3), dict(chunk=4, window=3)),
    "temperature with an offset": (dict(temperature_scale=0.5, temperature_length=3, temperature_offset=1.0),
                                   dict(temperature=(0.5, 3, 1.0))),
    "weightless Q/K norm after rope": (dict(use_rope=True, qk_norm="rmsnorm", qk_norm_after_rope=True),
                                       dict(rope=True, norm=(None, None))),
    "Q/K norm with weights after rope": (dict(use_rope=True, qk_norm="rmsnorm", qk_norm_after_rope=True),
                                         dict(rope=True, norm="weights")),
    "chunks, rope and the norm": (dict(chunk=4, use_rope=True, qk_norm="rmsnorm", qk_norm_after_rope=True),
                                  dict(chunk=4, rope=True, norm=(None, None))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("native_attention", [True, False])
def test_switches_match_written_out_attention(case: str, native_attention: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The full pass and decoding one token at a time from the cache (the native single-query kernel, or torch
    with the mask) both equal the reference."""
    opts, ref = CASES[case][0], dict(CASES[case][1])
    attn = _attention(**opts)
    if ref.get("norm") == "weights":  # weights far from 1: a norm before rope would then differ
        ref["norm"] = (_randn(DIM) + 2.0, _randn(DIM) + 2.0)
        attn.q_norm.set_weight("q_norm", ref["norm"][0])
        attn.k_norm.set_weight("k_norm", ref["norm"][1])
    if not native_attention:
        monkeypatch.setattr(native, "attend", lambda *a, **kw: None)
    x = _randn(2, 11, 16)
    pos = torch.arange(11).expand(2, 11)
    expected = _reference(attn, x, **ref)
    with torch.no_grad():
        full = attn(x, Step(pos, 0), None)
        state = SequenceState(2)
        steps = torch.cat([attn(x[:, i:i + 1], Step(pos[:, i:i + 1], i), state) for i in range(11)], dim=1)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps, expected, atol=1e-5, rtol=1e-5)


def test_the_switches_change_the_output() -> None:
    """Each switch makes a difference the reference sees (so the agreement above is not vacuous): chunks change
    the positions past the first chunk only; the norm before or after rope differs when it has weights."""
    attn = _attention()
    x = _randn(1, 11, 16)
    plain, chunked = _reference(attn, x), _reference(attn, x, chunk=3)
    torch.testing.assert_close(plain[:, :3], chunked[:, :3])
    assert ((plain[:, 3:] - chunked[:, 3:]).abs().amax(-1) > 1e-3).all()
    warm = _reference(attn, x, temperature=(0.5, 3, 1.0))
    torch.testing.assert_close(plain[:, :2], warm[:, :2])  # floor((p + 1) / 3) = 0 for p < 2
    assert ((plain[:, 2:] - warm[:, 2:]).abs().amax(-1) > 1e-3).all()
    w = (_randn(DIM) + 2.0, _randn(DIM) + 2.0)
    after = _attention(use_rope=True, qk_norm="rmsnorm", qk_norm_after_rope=True)
    before = _attention(use_rope=True, qk_norm="rmsnorm", qk_norm_after_rope=False)
    for name in ("q", "k", "v", "o"):
        getattr(before, name).set_weight(name, getattr(after, name).weight)
    for module in (after, before):
        module.q_norm.set_weight("q_norm", w[0])
        module.k_norm.set_weight("k_norm", w[1])
    pos = torch.arange(11)[None]
    with torch.no_grad():
        assert (after(x, Step(pos, 0), None) - before(x, Step(pos, 0), None)).abs().max() > 1e-3
