"""Broken checkpoint directories get one clear error naming the file and the key or tensor: a missing shard,
an index naming a tensor no shard has, a safetensors header that lies about offsets or dtype, a config.json
value of the wrong type."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tfb
from tfb.errors import TfbError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama checkpoint in several shards with an index."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(out, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


def copy_of(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_loads(sharded: Path) -> None:
    model = tfb.load(sharded)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 320)


def test_missing_shard(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).unlink()
    with pytest.raises(TfbError, match=rf"index.json: tensor '.*' is in shard {shard}, which is missing"):
        tfb.load(d)


def test_index_names_a_tensor_no_shard_has(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    path = d / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = shard
    path.write_text(json.dumps(index))
    with pytest.raises(TfbError, match=rf"index.json: tensor 'model.layers.0.mlp.extra.weight' is mapped to shard "
                                       rf"{shard}, which has no such tensor"):
        tfb.load(d)


def _rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])


def _first_shard(d: Path) -> tuple[Path, str]:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name, shard = sorted(index["weight_map"].items())[0]
    return d / shard, name


def test_header_lies_about_offsets(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    shard, name = _first_shard(d)

    def lie(header):
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + 10**9, end + 10**9]

    _rewrite_header(shard, lie)
    with pytest.raises(TfbError, match=rf"{shard.name}: tensor '{name}': data_offsets .* run past the end"):
        tfb.load(d)


def test_header_lies_about_dtype(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    shard, name = _first_shard(d)
    _rewrite_header(shard, lambda h: h[name].update(dtype="F16"))
    with pytest.raises(TfbError, match=rf"{shard.name}: tensor '{name}': data_offsets .* hold \d+ bytes, but shape "
                                       r".* of F16 needs \d+: the header lies about offsets or dtype"):
        tfb.load(d)


def test_config_key_of_the_wrong_type(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "num_attention_heads": "4"}))
    with pytest.raises(TfbError, match=r"config.json: key `num_attention_heads` \(for llama.attention.head_count\) "
                                       r"is a string '4', expected a whole number"):
        tfb.load(d)


def test_cli_prints_one_line(sharded: Path, tmp_path: Path) -> None:
    d = copy_of(sharded, tmp_path / "c")
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                               "rms_norm_eps": [1e-6]}))
    for command in ("check", "inspect"):
        result = subprocess.run([sys.executable, "-m", "tfb.cli", command, str(d)], capture_output=True, text=True,
                                cwd=ROOT)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "config.json: key `rms_norm_eps`" in result.stderr + result.stdout


def test_cli_checks_and_inspects_a_checkpoint(sharded: Path) -> None:
    check = subprocess.run([sys.executable, "-m", "tfb.cli", "check", str(sharded)], capture_output=True, text=True,
                           cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK: spec llama" in check.stdout
    inspect = subprocess.run([sys.executable, "-m", "tfb.cli", "inspect", str(sharded)], capture_output=True,
                             text=True, cwd=ROOT)
    assert inspect.returncode == 0, inspect.stderr
    assert "checkpoint directory" in inspect.stdout and "spec: llama" in inspect.stdout
