"""Older Qwen3-Next files: the gated delta-net's q, k, v and z in one `ssm_in` projection, grouped by key head
(llama.cpp src/models/qwen3next.cpp: ssm_in "used by legacy GGUF", its "legacy path" splits each key head's
[q, k, v's, z's]). Such a file is made here by rewriting a converted one (attn_qkv + attn_gate -> ssm_in); tfb
must give transformers' logits on it, as on the split file, and the spec's `qkvz: auto` must follow the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from compare import assert_decoding_equals_full, assert_logits_match, compare, ids_for
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from llama_reference import llama_cpp_logits

import tfb
from tfb.nn.mixers.gated_delta_net import GatedDeltaNetLayer

SHAPES = [(1, 1), (2, 40)]


def fuse_qkvz(src: Path, dst: Path) -> Path:
    """A copy of a qwen3next file whose delta-net layers hold ssm_in = per key head [q; k; v's; z's] in place of
    attn_qkv and attn_gate (the rows regrouped; the values unchanged)."""
    reader = GGUFReader(src)
    meta = {key: field for key, field in reader.fields.items()}
    arch = meta["general.architecture"].contents()
    key_heads, key_dim = meta[f"{arch}.ssm.group_count"].contents(), meta[f"{arch}.ssm.state_size"].contents()
    value_heads, inner = meta[f"{arch}.ssm.time_step_rank"].contents(), meta[f"{arch}.ssm.inner_size"].contents()
    per_key = inner // key_heads  # the v's (or z's) of one key head
    writer = GGUFWriter(str(dst), arch)
    for key, field in meta.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    tensors = {t.name: np.asarray(t.data).reshape(tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}
    assert value_heads % key_heads == 0
    for name, values in tensors.items():
        if name.endswith(".attn_gate.weight"):
            continue
        if name.endswith(".attn_qkv.weight"):
            z = tensors[name.replace("attn_qkv", "attn_gate")]
            q, k, v = np.split(values, [key_heads * key_dim, 2 * key_heads * key_dim])
            rows = [np.concatenate([q[j * key_dim:(j + 1) * key_dim], k[j * key_dim:(j + 1) * key_dim],
                                    v[j * per_key:(j + 1) * per_key], z[j * per_key:(j + 1) * per_key]])
                    for j in range(key_heads)]
            writer.add_tensor(name.replace("attn_qkv", "ssm_in"), np.concatenate(rows))
            continue
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def fused(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    reference, path = tiny_model("qwen3next", "f32")
    return reference, fuse_qkvz(path, tmp_path_factory.mktemp("fused-qkvz") / "model.gguf")


def test_the_fused_file_gives_transformers_logits(fused) -> None:
    reference, path = fused
    names = {t.name for t in GGUFReader(path).tensors}
    assert "blk.0.ssm_in.weight" in names and "blk.0.attn_qkv.weight" not in names
    model = tfb.load(path)
    layer = model.blocks[0].mixer
    assert isinstance(layer, GatedDeltaNetLayer) and layer.shape.fused_qkvz and not hasattr(layer, "qkv")
    assert model.config.fused_qkvz
    compare(model, reference, SHAPES)
    assert_decoding_equals_full(model)


def test_llama_cpp_reads_the_fused_file_alike(fused) -> None:
    """The rewritten file is one llama.cpp itself accepts (its legacy path), with tfb's logits."""
    _, path = fused
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), 1e-4)


def test_the_split_file_still_reads_attn_qkv(tiny_model) -> None:
    model = tfb.load(tiny_model("qwen3next", "f32")[1])
    assert not model.config.fused_qkvz and hasattr(model.blocks[0].mixer, "qkv")
