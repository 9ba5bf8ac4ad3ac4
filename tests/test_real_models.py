"""Real models, your own files: `TFB_TEST_MODELS=path[:path...] pytest -m real`.

For each GGUF file or checkpoint directory: `tfb check` passes, it loads, its perplexity on a fixed English text
(tests/data/real_text.txt) is that of a language model, 32 greedy tokens decoded with the KV cache equal 32 greedy
tokens recomputed without it, and, when llama-cpp-python is importable, llama.cpp tokenizes the text to the same
ids and agrees with tfb's top-1 token at >= 95% of its positions on the same GGUF file (a checkpoint directory is
first written as one by `tfb convert`). Without TFB_TEST_MODELS every test here is reported as skipped.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tfb

ROOT = Path(__file__).resolve().parent.parent
TEXT = Path(__file__).resolve().parent / "data" / "real_text.txt"
WORKER = Path(__file__).resolve().parent / "real_llama_worker.py"
MODELS = [p for p in os.environ.get("TFB_TEST_MODELS", "").split(os.pathsep) if p]
GREEDY = 32

pytestmark = pytest.mark.real
paths = pytest.mark.parametrize("path", MODELS or [pytest.param(None, marks=pytest.mark.skip(
    reason="set TFB_TEST_MODELS=path[:path...] to GGUF files or checkpoint directories"))])

_LOADED: dict[str, tuple[object, object]] = {}


def loaded(path: str) -> tuple[object, object]:
    if path not in _LOADED:
        _LOADED.clear()  # one real model in memory at a time
        _LOADED[path] = (tfb.load(path), tfb.load_tokenizer(path))
    return _LOADED[path]


@paths
def test_check_passes(path: str) -> None:
    from tfb.authoring.check import check

    report = check(path)
    assert report.ok, "\n".join(report.lines())


@paths
def test_perplexity_of_a_fixed_text(path: str) -> None:
    model, tok = loaded(path)
    ids = torch.tensor([tok.encode(TEXT.read_text(encoding="utf-8"))])
    with torch.no_grad():
        logits = model(ids)[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    perplexity = math.exp(nll)
    print(f"{path}: perplexity {perplexity:.2f} over {ids.shape[1]} tokens")
    # a uniform guess over the vocabulary scores its size; any trained model is far below a tenth of it
    assert math.isfinite(perplexity) and perplexity < tok.vocab_size / 10


@paths
def test_greedy_tokens_with_cache_equal_without(path: str) -> None:
    model, tok = loaded(path)
    prompt = tok.encode("The lighthouse keeper climbed the stairs")
    with torch.no_grad():
        cache = model.new_cache()
        logits = model(torch.tensor([prompt]), cache)
        cached: list[int] = []
        for _ in range(GREEDY):
            cached.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[cached[-1]]]), cache)
        fresh: list[int] = []
        for _ in range(GREEDY):
            fresh.append(int(model(torch.tensor([prompt + fresh]))[0, -1].argmax()))
    assert cached == fresh


def _llama_cpp_env() -> dict[str, str] | None:
    """An environment in which llama-cpp-python imports: as installed, else tfb's own cached build."""
    sys.path.insert(0, str(ROOT / "tools"))
    from llama_cpp import VERSION, cache_dir

    candidates = [dict(os.environ)]
    built = cache_dir() / f"llama-cpp-python-{VERSION}"
    if built.is_dir():
        candidates.append({**os.environ, "PYTHONPATH": str(built)})
    for env in candidates:
        probe = subprocess.run([sys.executable, "-c", "from llama_cpp import Llama"], env=env, cwd="/",
                               capture_output=True)
        if probe.returncode == 0:
            return env
    return None


@paths
def test_llama_cpp_agrees(path: str, tmp_path: Path) -> None:
    env = _llama_cpp_env()
    if env is None:
        pytest.skip("llama-cpp-python is not importable")
    gguf = path
    if Path(path).is_dir():
        from tfb.sources.checkpoint import CheckpointSource
        from tfb.sources.convert import convert

        with CheckpointSource(path) as c:  # the checkpoint's own matrix type: the file holds the same weights
            types = {t.ggml_type.name for t in c.tensors.values() if len(t.shape) > 1}
        outtype = "f32" if "F32" in types else "f16" if "F16" in types else "bf16"
        gguf = str(convert(path, tmp_path / "model.gguf", outtype))
    out = tmp_path / "llama.npz"
    result = subprocess.run([sys.executable, str(WORKER), gguf, str(TEXT), str(out)], env=env, cwd="/",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = np.load(out)
    model, tok = loaded(path)
    ids = tok.encode(TEXT.read_text(encoding="utf-8"))
    assert ids == theirs["ids"].tolist()
    with torch.no_grad():
        top1 = model(torch.tensor([ids]))[0].argmax(-1).numpy()
    agreement = float((top1 == theirs["top1"]).mean())
    print(f"{path}: top-1 agreement with llama.cpp {agreement:.3f}")
    assert agreement >= 0.95
