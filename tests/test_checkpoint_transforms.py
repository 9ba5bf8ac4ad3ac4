"""The naming tables' computed entries on edited copies of fixture checkpoints: longrope's attention factor and
factor tensors follow config.json, and a config or tensor they cannot use is refused naming it."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tfb
from tfb.sources.checkpoint import CheckpointSource


def edited(tiny_model, family: str, out, config: dict | None = None):
    shutil.copytree(tiny_model(family, "f32")[1].parent / "hf", out)
    if config:
        data = json.loads((out / "config.json").read_text())
        for key, value in config.items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
        (out / "config.json").write_text(json.dumps(data))
    return out


def test_longrope_attention_factor_and_factors_follow_the_config(tiny_model, tmp_path) -> None:
    long = [2.0 + i for i in range(8)]
    d = edited(tiny_model, "phi3_longrope", tmp_path / "c", {"max_position_embeddings": 4096,
                                                             "rope_parameters.long_factor": long})
    with CheckpointSource(d) as c:
        # sqrt(1 + ln(4096 / 256) / ln(256)) = sqrt(1.5)
        assert c.metadata["phi3.rope.scaling.attn_factor"].value == pytest.approx(math.sqrt(1.5), rel=1e-7)
        assert torch.equal(c.tensor("rope_factors_long.weight"), torch.tensor(long))
    shrunk = edited(tiny_model, "phi3_longrope", tmp_path / "s", {"max_position_embeddings": 128})
    with CheckpointSource(shrunk) as c:  # a context below the original: the factor 1, as the converter's
        assert c.metadata["phi3.rope.scaling.attn_factor"].value == 1.0


def test_a_factor_list_that_is_not_numbers_is_refused(tiny_model, tmp_path) -> None:
    d = edited(tiny_model, "phi3_longrope", tmp_path / "c", {"rope_parameters.short_factor": ["1.0"] * 8})
    with pytest.raises(tfb.TfbError, match=r"key `rope_parameters.short_factor` is .* expected a list of numbers "
                                           r"\(for rope_factors_short.weight\)"):
        CheckpointSource(d)


def test_interleaved_rows_that_do_not_pair_up_are_refused(tiny_model, tmp_path) -> None:
    d = edited(tiny_model, "gpt-oss", tmp_path / "c")
    shard = next(d.glob("*.safetensors"))
    tensors = load_file(shard)
    name = "model.layers.0.mlp.experts.gate_up_proj_bias"
    tensors[name] = tensors[name][:, :-1].contiguous()  # an odd number of gate/up values
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(tfb.TfbError, match=rf"tensor '{name}' of shape \[4, 127\] cannot be taken every 2 from 0 "
                                           r"along dimension -1 \(for blk.0.ffn_gate_exps.bias\)"):
        CheckpointSource(d)


def test_a_quantized_checkpoint_is_refused(tiny_model, tmp_path) -> None:
    """gpt-oss as released: MXFP4 experts (`*_blocks`, `*_scales`), which only the converter repacks."""
    d = edited(tiny_model, "gpt-oss", tmp_path / "c", {"quantization_config": {"quant_method": "mxfp4"}})
    with pytest.raises(tfb.TfbError, match=r"config.json: key `quantization_config` \(quant_method 'mxfp4'\): "
                                           r"quantized checkpoints are not read; convert it with llama.cpp's"):
        tfb.load(d)


def test_an_older_config_reads_as_the_converter_reads_it(tiny_model, tmp_path) -> None:
    """Phi-3's config.json as published before transformers 5: `rope_scaling` with `type`, the base and the original
    context at the top level. It converts to the converter's very file, and runs the long factors as transformers."""
    from compare import assert_logits_match, compare
    from test_convert import assert_same_gguf, reference_file

    from tfb.sources.convert import convert

    reference, _ = tiny_model("phi3_longrope", "f32")
    d = edited(tiny_model, "phi3_longrope", tmp_path / "c")
    config = json.loads((d / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope["rope_theta"], original_max_position_embeddings=256, rope_scaling={
        "type": "longrope", "long_factor": rope["long_factor"], "short_factor": rope["short_factor"]})
    (d / "config.json").write_text(json.dumps(config))
    assert_same_gguf(convert(d, tmp_path / "ours.gguf", "f32"), reference_file(d, "f32", tmp_path / "theirs.gguf"))
    compare(tfb.load(d), reference, [(1, 264)], assert_logits_match)
