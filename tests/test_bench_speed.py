"""tools/bench_speed.py's pieces that need no timing: the files it makes and the table it prints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType, GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench_speed
from make_tiny_gguf import _metadata, storage_type

from tfb.build import build_modules
from tfb.hparams import build_config
from tfb.spec import load_spec

Q = GGMLQuantizationType


@pytest.mark.parametrize(("kind", "cols", "fallback", "want"), [
    ("Q4_K_M", 1024, True, Q.Q4_K),  # divisible: the mix's own type
    ("Q4_K_M", 576, True, Q.Q5_0),  # llama-quantize: Q4_K -> Q5_0
    ("Q4_K_M", 576, False, Q.F32),  # the default keeps the old F32 rows
    ("Q6_K", 640, True, Q.Q8_0),
    ("Q4_K", 48, True, Q.F16),  # not even the 32-weight fallback fits
    ("Q8_0", 48, True, Q.F16),
])
def test_fallback_types(kind: str, cols: int, fallback: bool, want: GGMLQuantizationType) -> None:
    assert storage_type(kind, "attn_q", (64, cols), 3, 30, "output", fallback) == want


@pytest.mark.parametrize(("kind", "slot", "want"), [
    ("Q4_K_M", "attn_qkv", Q.Q5_K),  # llama-quantize's Q4_K_M: fused Q/K/V one step up
    ("Q4_K_M", "ssm_conv1d", Q.F32),  # recurrent layers' convolution kernels: never quantized
    ("Q8_0", "shortconv_conv", Q.F32),
])
def test_llama_quantize_rules(kind: str, slot: str, want: GGMLQuantizationType) -> None:
    assert storage_type(kind, slot, (64, 256), 3, 30, "output", True) == want


@pytest.mark.parametrize(("shape", "mixers"), [
    ("lfm2-350m", {"ShortConv": 10, "Attention": 6}),
    ("qwen35-0.8b", {"GatedDeltaNetLayer": 18, "Attention": 6}),
])
def test_hybrid_shapes(shape: str, mixers: dict[str, int]) -> None:
    """The hybrid shapes' metadata (per-layer head counts included) builds the real models' layer mix."""
    info = bench_speed.SHAPES[shape]
    spec = load_spec(info["spec"])
    arch = spec.match[0]
    meta = _metadata(spec, arch, {"vocab_size": 256, "norm_eps": 1e-5, **info["sizes"]})
    blocks = build_modules(spec, build_config(spec, meta, set(), arch=arch, where=shape)).blocks
    names = [type(block.mixer).__name__ for block in blocks]
    assert {name: names.count(name) for name in set(names)} == mixers


def test_padded_vocab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFB_CACHE", str(tmp_path))
    reader = GGUFReader(bench_speed.padded_vocab(32100))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 32100 and len(set(tokens)) == 32100
    assert len(reader.fields["tokenizer.ggml.scores"].contents()) == 32100
    assert reader.fields["tokenizer.ggml.token_type"].contents()[-1] == 1


def test_table_ratios() -> None:
    def fig(p: float, d: float) -> dict:
        return {"prompt_tps": p, "decode_tps": d, "prompt_cpu_tps": 2 * p, "decode_cpu_tps": 2 * d,
                "rss_over_baseline": 100 * 2**20}
    row = {"shape": "s", "type": "Q8_0", "file_bytes": 80 * 2**20, "tfb": fig(300, 20), "llama.cpp": fig(200, 40)}
    lines = bench_speed.table([row]).splitlines()
    assert lines[2] == "| s | Q8_0 | 80 MiB | tfb | 300.0 | 20.0 | 1.50x | 0.50x | 1.50x, 0.50x | 100 MiB | 1.25x |"
    assert lines[3].startswith("| s | Q8_0 | 80 MiB | llama.cpp | 200.0 | 40.0 | – | – | – |")
