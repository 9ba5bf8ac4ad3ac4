from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # fixture makers live in tools/
from tiny_hf import build_hf, convert, preround

_BUILT: dict[tuple[str, str], tuple[torch.nn.Module, Path]] = {}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """tiny_model(family, outtype) -> (transformers model, GGUF path): the reference model, with weights
    rounded to what `outtype` stores, and llama.cpp's conversion of exactly those weights. Cached."""

    def make(family: str, outtype: str = "f32") -> tuple[torch.nn.Module, Path]:
        key = (family, outtype)
        if key not in _BUILT:
            model, fam = build_hf(family)
            preround(model, outtype, fam.keep_f32, fam.transposed)
            path = convert(model, fam, outtype, tmp_path_factory.mktemp(f"{family}-{outtype}"))
            _BUILT[key] = (model, path)
        return _BUILT[key]

    return make


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    """tiny_gguf(spec, vocab_file, type) -> a random model made from a spec by tools/make_tiny_gguf.py."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from make_tiny_gguf import make

    made: dict[tuple[str, str, str], Path] = {}

    def build(spec: str = "qwen3", vocab: str = "ggml-vocab-llama-spm.gguf", qtype: str = "F32") -> Path:
        from gguf import GGMLQuantizationType

        key = (spec, vocab, qtype)
        if key not in made:
            out = tmp_path_factory.mktemp("tiny") / f"{spec}-{qtype}.gguf"
            vocab_file = Path(__file__).resolve().parent / "data" / "vocab" / vocab
            make(spec, out, {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
                             "intermediate_size": 128, "context_length": 512},
                 GGMLQuantizationType[qtype], vocab_file)
            made[key] = out
        return made[key]

    return build


@pytest.fixture(params=["avx512", "avx2", "portable"])
def isa(request: pytest.FixtureRequest):
    """The native kernels of each instruction set the CPU runs, in turn (not only the one tfb would pick)."""
    import tfb.quant.native as native

    if not native.set_isa(request.param):
        pytest.skip(f"this CPU does not run {request.param}")
    yield request.param
    native.set_isa("")
