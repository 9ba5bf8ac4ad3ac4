"""tfb.load on a transformers checkpoint directory (config.json + safetensors) through the spec's naming table:
the logits equal transformers' on the very weights llama.cpp's converter turned into the GGUF fixture, and the
checkpoint reads as the same metadata and tensors as that converter's file."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from compare import assert_logits_match, compare

import tfb
from tfb.gguf.reader import GGUFFile
from tfb.sources.checkpoint import CheckpointSource

# mistral: llama.cpp ignores the window, transformers applies it: sequences within the window of 8
FAMILIES = {"llama": 12, "llama_tied": 12, "qwen2": 12, "qwen3": 12, "gemma": 12, "gemma2": 12, "starcoder2": 12,
            "mistral": 8, "mixtral": 12, "qwen3moe": 12, "gpt2": 12, "deepseek_v3": 12, "deepseek_v2": 12,
            "qwen2moe": 12, "olmoe": 12, "olmo2": 12, "granite": 12, "granitemoe": 12, "smollm3": 12, "glm4": 12,
            "olmo": 12, "phi2": 12, "stablelm": 12, "llama3": 30,
            "lfm2": 12, "lfm2moe": 12, "mamba2": 12, "granitehybrid": 12,
            "falcon_h1": 12, "falcon_h1_no_norm": 12, "falcon_h1_tied": 12,
            "nemotron_h": 12, "nemotron_h_moe": 12, "nemotron_h_moe_latent": 12}

# where llama.cpp (and so tfb) departs from transformers by a known factor: Falcon-H1 with tied embeddings, whose
# converter folds embedding_multiplier (2) into token_embd, also the output, and lm_head_multiplier (0.5) into
# nothing (tests/test_falcon_h1.py checks the converted file against llama.cpp)
LOGIT_FACTOR = {"falcon_h1_tied": 4.0}
# phi3_window: transformers applies the window llama.cpp ignores: within it
FAMILIES.update({"phi3": 12, "phi3_window": 8, "phi3_longrope": 264, "phi3_longrope_32": 40})
# longrope: tfb runs the file's context (past the original), so the long factors, which transformers takes past
# the original context only: every sequence longer than it
SHAPES = {"phi3_longrope": [(1, 264)], "phi3_longrope_32": [(1, 40), (2, 33)]}
# tfb follows llama.cpp, not transformers (test_more_families.test_phimoe_differs_from_transformers): the
# checkpoint reads as the converter's file, whose logits tests/test_llama_cpp_reference.py checks
READ_ONLY = ["phimoe"]
FAMILIES.update({"mistral3": 40, "gemma3": 12, "stablelm_parallel": 12, "stablelm_qk_norm": 12, "gpt-oss": 12,
                 "deepseek_v3_lite": 12, "deepseek_v3_wide": 12, "granitemoe_shared": 12, "gemma3_vision": 12,
                 "mistral3_vision": 40})
FAMILIES.update({"ernie4_5_moe": 12, "ernie4_5_moe_interleaved": 12, "glm4moe": 12,
                 # llama4: the spec's chunk and temperature floor are llama.cpp's 8192, the tiny model's 8: 7 tokens
                 "llama4": 7, "qwen3next": 12, "qwen35": 12, "qwen35moe": 12,
                 "qwen3next_mtp": 12, "qwen35_vl": 12, "llama4_vl": 7})
FAMILIES.update({"gemma4": 12, "gemma4moe": 12, "llama_wide": 12})
FAMILIES.update({"gemma4_vl": 12, "qwen35moe_vl": 12})


def checkpoint(tiny_model, family: str):
    reference, gguf_path = tiny_model(family, "f32")
    return reference, gguf_path, gguf_path.parent / "hf"


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_logits_equal_transformers(tiny_model, family: str) -> None:
    reference, _, directory = checkpoint(tiny_model, family)
    model = tfb.load(directory)
    factor = LOGIT_FACTOR.get(family, 1.0)
    compare(model, reference, SHAPES.get(family, [(1, FAMILIES[family]), (2, 5)]),
            lambda ours, theirs: assert_logits_match(ours, theirs * factor))


@pytest.mark.parametrize("family", [*FAMILIES, *READ_ONLY])
def test_checkpoint_reads_as_the_converters_file(tiny_model, family: str) -> None:
    """Every metadata key the converter writes (tokenizer and provenance keys aside) with its type and value,
    and every tensor with its name, shape and values."""
    _, gguf_path, directory = checkpoint(tiny_model, family)
    with GGUFFile(gguf_path) as g, CheckpointSource(directory) as c:
        theirs = {k: v for k, v in g.metadata.items() if not k.startswith(("tokenizer.", "general."))}
        for key, meta in theirs.items():
            assert key in c.metadata, key
            assert c.metadata[key].type == meta.type, key
            assert np.array_equal(np.asarray(c.metadata[key].value), np.asarray(meta.value)), key
        assert set(c.tensors) == set(g.tensors)
        for name, info in g.tensors.items():
            assert c.tensors[name].shape == info.shape, name
            assert info.ggml_type.name == "F32"
            assert torch.equal(c.tensor(name).float().reshape(-1),
                               torch.from_numpy(g.tensor_data(name)).view(torch.float32)), name


def test_bf16_checkpoint_stays_bf16_and_mapped(tiny_model, tmp_path) -> None:
    """A bfloat16 checkpoint loads as bfloat16 weights that are views of the shard's map (no copy), and gives
    transformers' bfloat16 logits within bfloat16 rounding."""
    reference, _, _ = checkpoint(tiny_model, "qwen3")
    half = copy.deepcopy(reference).to(torch.bfloat16)  # the cached reference stays float32
    half.save_pretrained(tmp_path)
    with CheckpointSource(tmp_path) as c:
        assert c.tensors["blk.0.attn_q.weight"].ggml_type.name == "BF16"
        assert c.tensors["blk.0.attn_norm.weight"].ggml_type.name == "F32"  # vectors float32, as the converter's
        mapped = c.store.get("model.layers.0.self_attn.q_proj.weight")
        assert c.tensor("blk.0.attn_q.weight").data_ptr() == mapped.data_ptr()  # no transform: the map itself
    model = tfb.load(tmp_path, dtype=torch.bfloat16)
    ids = torch.tensor([[1, 5, 9, 20, 7, 3]])
    with torch.no_grad():
        ours, theirs = model(ids).float(), half(ids).logits.float()
    assert (ours - theirs).abs().max() <= 0.05 * theirs.abs().max()


@pytest.mark.parametrize("family", ["qwen3moe", "starcoder2", "llama", "gemma"])
def test_checkpoint_tokenizer_is_the_converters(tiny_model, family: str) -> None:
    """tokenizer.json read as the converter writes it: the same tokenizer.* keys, hence the same ids."""
    from tfb.sources.checkpoint import checkpoint_tokenizer_metadata

    _, gguf_path, directory = checkpoint(tiny_model, family)
    ours = checkpoint_tokenizer_metadata(directory)
    with GGUFFile(gguf_path) as g:
        theirs = {k: v for k, v in g.metadata.items() if k.startswith("tokenizer.")}
    assert set(ours) == set(theirs)
    for key, meta in theirs.items():
        assert ours[key].type == meta.type, key
        assert np.array_equal(np.asarray(ours[key].value), np.asarray(meta.value)), key
    text = "the quick brown fox jumps over the lazy dog, hello world" if family in ("llama", "gemma") else \
        "Hello world, it's 2026!  <|endoftext|> ünïcödé  \n\n tabs\tand 12345"
    assert tfb.load_tokenizer(directory).encode(text) == tfb.load_tokenizer(gguf_path).encode(text)


def with_unknown_pre_tokenizer(directory, out):
    """A copy of a checkpoint directory whose tokenizer.json splits digits first: a pre-tokenizer the
    converter's table does not know."""
    import json
    import shutil

    shutil.copytree(directory, out)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_unknown_pre_tokenizer_is_refused_naming_vocab_pre(tiny_model, tmp_path) -> None:
    _, _, directory = checkpoint(tiny_model, "qwen3moe")
    d = with_unknown_pre_tokenizer(directory, tmp_path / "c")
    with pytest.raises(tfb.TfbError, match=r"tokenizer.json: the BPE pre-tokenizer is not one llama.cpp's converter "
                                           r"knows .* pass --vocab-pre NAME"):
        tfb.load_tokenizer(d)
    assert tfb.load_tokenizer(d, vocab_pre="gpt-2").vocab.pre is not None


def test_cli_runs_a_checkpoint_directory(tiny_model) -> None:
    """`tfb run DIR`: the model and its tokenizer from the directory, greedy text as from the converted file."""
    import subprocess
    import sys
    from pathlib import Path

    _, gguf_path, directory = checkpoint(tiny_model, "qwen3moe")
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "tfb.cli", "run", "-p", "Hello world", "-n", "6", "--temp", "0"]
    outputs = [subprocess.run([*command, str(path)], capture_output=True, text=True, cwd=root)
               for path in (directory, gguf_path)]
    for out in outputs:
        assert out.returncode == 0, out.stderr
    assert outputs[0].stdout == outputs[1].stdout and len(outputs[0].stdout) > len("Hello world")


def test_hybrid_checkpoint_without_layer_types_is_refused_naming_the_key(tiny_model, tmp_path) -> None:
    """Granite 4.0-H's per-layer head_count_kv comes from layer_types; a config giving its attention layers
    otherwise (attn_layer_indices) is refused with the key named, not loaded with a wrong layer plan."""
    import json
    import shutil

    _, _, directory = checkpoint(tiny_model, "granitehybrid")
    d = shutil.copytree(directory, tmp_path / "c")
    config = json.loads((d / "config.json").read_text())
    del config["layer_types"]
    (d / "config.json").write_text(json.dumps({**config, "attn_layer_indices": [1, 3]}))
    with pytest.raises(tfb.TfbError, match=r"config.json: gives none of layer_types, the layer types "
                                           r"granitehybrid.attention.head_count_kv is made from"):
        tfb.load(d)


def _resident_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are dropped on Linux only")
def test_copied_tensors_drop_their_mapped_pages(tmp_path) -> None:
    """Once a tensor's values are copied (experts stacked, a transform), its pages of the shard's map stop
    counting in the process's memory, and reading the range again gives the file's values back."""
    from safetensors.torch import save_file

    from tfb.sources.safetensors_dir import SafetensorsDir, release_pages

    values = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))  # 4 MiB
    save_file({"a": values, "b": values + 1}, str(tmp_path / "model.safetensors"))
    store = SafetensorsDir(tmp_path)
    mapped = store.get("a")
    copy = mapped.clone()  # every page of "a" resident
    before = _resident_file_kib()
    release_pages(mapped)
    assert before - _resident_file_kib() >= 3 * 1024
    assert torch.equal(mapped, values) and torch.equal(copy, values) and torch.equal(store.get("b"), values + 1)


def test_every_fixture_family_is_loaded_and_converted_from_its_checkpoint() -> None:
    """Issue 19's reach: each tiny transformers model the suite builds is also read as a checkpoint directory
    (logits, or for families where tfb follows llama.cpp the converter's file) and converted (test_convert)."""
    from test_convert import FAMILIES as CONVERTED
    from tiny_hf import FAMILIES as FIXTURES

    assert set(FIXTURES) == set(FAMILIES) | set(READ_ONLY)
    assert set(FIXTURES) == set(CONVERTED)
