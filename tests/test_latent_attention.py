"""Latent attention (MLA) and the deepseek2 spec: tfb's logits against transformers' DeepSeek V2/V3 models on the
same weights (llama.cpp's converter), with and without the low-rank query, with sigmoid grouped routing and with
softmax greedy routing, in F32, Q8_0, Q4_0 and Q4_K files, and against llama.cpp itself on the F32 files;
incremental decoding; and the cache holding only the latent and the rope part of each position."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from compare import assert_greedy_equals_transformers, assert_logits_match, compare, ids_for

import tfb
from tfb.config import ModelConfig
from tfb.errors import ConfigError
from tfb.gguf.reader import GGUFFile, MetaValue
from tfb.hparams import build_config
from tfb.nn.ffn.routed import Experts
from tfb.nn.mixers.latent_attention import LatentAttentionLayer
from tfb.quant import PackedTensor

# deepseek_v3: low-rank query, sigmoid + selection bias in 4 groups (2 kept), renormalised, x2.5, 1 shared expert;
# deepseek_v3_lite: the same without the low-rank query (26 layers); deepseek_v2: no low-rank query, softmax
# greedy top-3, no renormalisation, x1.5, 2 shared experts, YaRN mscale_all_dim 0.707 (27 layers)
FAMILIES = ["deepseek_v3", "deepseek_v3_lite", "deepseek_v2"]
SHAPES = [(1, 1), (3, 1), (2, 40)]  # 40 > the original YaRN context (32)
QUANTIZED = [("deepseek_v3", "q8_0"), ("deepseek_v3", "q4_0"), ("deepseek_v2", "q8_0")]
# tensors that must stay in the file's block type: per-head k_b/v_b, stacked experts, shared experts
PACKED = ("attn_k_b", "attn_v_b", "ffn_gate_exps", "ffn_down_exps", "ffn_up_shexp", "ffn_down_shexp")


def _layers(model: tfb.Transformer) -> list[LatentAttentionLayer]:
    mixers = [block.mixer for block in model.blocks]
    assert all(isinstance(m, LatentAttentionLayer) for m in mixers)
    return mixers  # type: ignore[return-value]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    compare(tfb.load(path), reference, SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same files (tests/llama_reference.py; float32 KV cache): its absorbed MLA graph,
    its YaRN magnitude and its routing. The 26/27-layer files are ones llama.cpp's layer-count rule reads
    without q_lora_rank."""
    from llama_reference import llama_cpp_logits

    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        ours = model(ids)
    assert_logits_match(ours, llama_cpp_logits(path, ids), 1e-4)


def _rewritten(path: Path, out: Path, drop: str = "", value: tuple[str, object] | None = None,
               floats: dict[str, float] | None = None, ints: dict[str, int] | None = None) -> Path:
    """A copy of an F32 GGUF file without the key `drop`, with key `value[0]` set to `value[1]`, and with the
    keys of `floats` (float32) and `ints` (uint32) added."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(path)
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", drop):
            continue
        vtype = GGUFValueType(field.types[0])
        contents = value[1] if value is not None and key == value[0] else field.contents()
        sub_type = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, contents, vtype, sub_type=sub_type)
    for key, number in (floats or {}).items():
        writer.add_key_value(key, number, GGUFValueType.FLOAT32)
    for key, count in (ints or {}).items():
        writer.add_key_value(key, count, GGUFValueType.UINT32)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# what llama.cpp does where a file lacks a key or scales rope otherwise: its default gating (softmax), YaRN
# without mscale_all_dim (the magnitude on rope and on the scores), linear scaling (the magnitude on the scores);
# and Mistral Large 3's query temperature (steps of 8 positions: 5 steps in 40)
VARIANTS: dict[str, dict[str, Any]] = {
    "no_gating_key": {"drop": "deepseek2.expert_gating_func"},
    "yarn_without_log_multiplier": {"drop": "deepseek2.rope.scaling.yarn_log_multiplier"},
    "linear_scaling": {"value": ("deepseek2.rope.scaling.type", "linear")},
    "query_temperature": {"floats": {"deepseek2.attention.temperature_scale": 0.5},
                          "ints": {"deepseek2.attention.temperature_length": 8}},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_file_variants_match_llama_cpp(tiny_model, tmp_path, variant: str) -> None:
    from llama_reference import llama_cpp_logits

    _, original = tiny_model("deepseek_v3", "f32")
    path = _rewritten(original, tmp_path / "variant.gguf", **VARIANTS[variant])
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        ours, before = model(ids), tfb.load(original)(ids)
    assert (ours - before).abs().max() > 1e-2 * before.abs().max()  # the variant changes the logits
    assert_logits_match(ours, llama_cpp_logits(path, ids), 1e-4)


def _types(model: tfb.Transformer, layer: int) -> dict[str, str]:
    block = model.blocks[layer]
    ffn = block.ffn
    assert isinstance(ffn, Experts) and ffn.shared is not None
    weights = {"attn_k_b": block.mixer.k_b.weight, "attn_v_b": block.mixer.v_b.weight,
               "ffn_gate_exps": ffn.gate.weight, "ffn_down_exps": ffn.down.weight,
               "ffn_up_shexp": ffn.shared.up.packed, "ffn_down_shexp": ffn.shared.down.packed}
    return {slot: w.ggml_type.name if isinstance(w, PackedTensor) else "float" for slot, w in weights.items()}


@pytest.mark.parametrize(("family", "outtype"), QUANTIZED)
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    model = tfb.load(path)
    assert _types(model, 1) == dict.fromkeys(PACKED, outtype.upper())  # multiplied from their blocks
    compare(model, reference, SHAPES)


def test_k_quant_file(tiny_model) -> None:
    """Q4_K (ggml's reference quantizer) on a model whose every matrix row is a multiple of 256: the
    per-head k_b/v_b, experts and shared experts as Q4_K blocks; tied embeddings."""
    reference, path = tiny_model("deepseek_v3_wide", "q4_k")
    model = tfb.load(path)
    assert _types(model, 1) == dict.fromkeys(PACKED, "Q4_K")
    with GGUFFile(path) as gguf:
        assert "output.weight" not in gguf.tensors and gguf.tensors["token_embd.weight"].ggml_type.name == "Q4_K"
    compare(model, reference, SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_gives_the_full_forward_logits(tiny_model, family: str) -> None:
    """One token at a time (the decode step's path), then chunks after cached positions, through
    model.new_cache(); the 26/27-layer models accumulate rounding, as in transformers' own cache (~1e-5)."""
    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 45), generator=torch.Generator().manual_seed(3))
    steps = [(i, i + 1) for i in range(10)] + [(10, 20), (20, 21), (21, 33), (33, 45)]
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        pieces = [model(ids[:, a:b], cache) for a, b in steps]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4 * full.abs().max().item(), rtol=0)
    assert cache.length == 45


def test_cache_holds_the_latent_and_the_rope_part_only(tiny_model) -> None:
    """Per layer and position the cache holds kv_lora_rank + rope_dims values (72 here, the file's
    attention.key_length), shared by the 4 heads, not expanded keys and values (4 x (40 + 16)); they are
    transformers' cached latent and rope key (which stores the rope part's pairs de-interleaved)."""
    reference, path = tiny_model("deepseek_v3", "f32")
    model = tfb.load(path)
    c = model.config
    latent, rope = c.kv_lora_rank, c.rope_dims
    with GGUFFile(path) as gguf:
        assert gguf.metadata["deepseek2.attention.key_length"].value == latent + rope == 72
    ids = ids_for(c.vocab_size, 2, 9)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, cache)
        theirs = reference(ids, use_cache=True).cache
    for i, state in enumerate(cache.layers):
        (buffer,) = [b for b in state.buffers if b is not None]
        assert len(state.buffers) == 1 and buffer.shape[1] == 1 and buffer.shape[3] == latent + rope
        ours = buffer[:, :, :9]
        torch.testing.assert_close(ours[..., :latent], theirs.layers[i].keys, atol=1e-5, rtol=1e-5)
        pairs = ours[..., latent:]
        torch.testing.assert_close(torch.cat((pairs[..., 0::2], pairs[..., 1::2]), dim=-1), theirs.layers[i].values,
                                   atol=1e-5, rtol=1e-5)


def test_greedy_equals_transformers_generate(tiny_model) -> None:
    reference, path = tiny_model("deepseek_v3", "f32")
    model = tfb.load(path)
    assert_greedy_equals_transformers(model, reference, 20)


def test_switches_the_files_exercise(tiny_model) -> None:
    """What each tiny file makes the spec do, so that agreement above means something."""
    v3 = tfb.load(tiny_model("deepseek_v3", "f32")[1])
    lite = tfb.load(tiny_model("deepseek_v3_lite", "f32")[1])
    v2 = tfb.load(tiny_model("deepseek_v2", "f32")[1])
    assert [m.shape.q_rank for m in _layers(v3)] == [96] * 3 and hasattr(_layers(v3)[0], "q_a")
    assert {m.shape.q_rank for m in _layers(lite)} == {0} and hasattr(_layers(lite)[0], "q")
    shape = _layers(v3)[0].shape
    assert (shape.nope, shape.rope, shape.value, shape.latent) == (32, 8, 16, 64)
    for model in (v3, lite, v2):  # layer 0 dense, the others routed with shared experts
        assert not isinstance(model.blocks[0].ffn, Experts)
        assert all(isinstance(b.ffn, Experts) and b.ffn.shared is not None for b in model.blocks[1:])
    routed3, routed2 = v3.blocks[1].ffn, v2.blocks[1].ffn
    assert (routed3.gating, routed3.groups, routed3.groups_used, routed3.normalize, routed3.scale) == \
        ("sigmoid", 4, 2, True, 2.5)
    assert routed3.selection_bias is not None and routed3.shared.up.out_features == 32
    assert (routed2.gating, routed2.groups, routed2.normalize, routed2.scale) == ("softmax", 0, False, 1.5)
    assert routed2.selection_bias is None and routed2.shared.up.out_features == 64  # 2 shared experts of 32
    # YaRN factor 4: the scores carry (1 + 0.1 mscale_all_dim ln 4)^2, rope's cos/sin stay unscaled
    for model, mscale_all_dim in ((v3, 1.0), (v2, 0.707)):
        mixer = _layers(model)[0]
        assert model.config.yarn_log_multiplier == pytest.approx(mscale_all_dim)
        assert mixer.rotary.params.mscale == 1.0 and mixer.rotary.params.pairing == "adjacent"
        assert mixer.scale == pytest.approx((1 + 0.1 * mscale_all_dim * math.log(4)) ** 2 / math.sqrt(40))


def _metadata(path, drop: str = "", **changes: MetaValue) -> dict[str, MetaValue]:
    with GGUFFile(path) as gguf:
        meta = {k: v for k, v in gguf.metadata.items() if k != drop}
    return {**meta, **changes}


def test_gating_and_errors_from_the_metadata(tiny_model) -> None:
    """Without expert_gating_func the spec says llama.cpp's default (softmax); an unknown value and a missing
    kv_lora_rank are refused naming the key."""
    _, path = tiny_model("deepseek_v3", "f32")
    spec = tfb.load_spec("deepseek2")
    with GGUFFile(path) as gguf:
        names = set(gguf.tensors)

    def config(meta: dict[str, MetaValue]) -> ModelConfig:
        return build_config(spec, meta, names, arch="deepseek2", where="x.gguf")

    sections = spec.ffn
    assert sections[1].scores(config(_metadata(path))) == "sigmoid"
    assert sections[1].scores(config(_metadata(path, drop="deepseek2.expert_gating_func"))) == "softmax"
    with pytest.raises(ConfigError, match="expert_gating_func = 4 is not supported"):
        config(_metadata(path, **{"deepseek2.expert_gating_func": MetaValue(4, "uint32")}))
    with pytest.raises(ConfigError, match=r"kv_lora_rank is 0 .*attention\.kv_lora_rank"):
        config(_metadata(path, drop="deepseek2.attention.kv_lora_rank"))

