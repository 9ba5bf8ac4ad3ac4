"""tfb against llama.cpp itself, on the same GGUF files (llama-cpp-python built once from the pinned sdist:
tests/llama_reference.py). Every family where tfb follows llama.cpp rather than transformers
(docs/llama-cpp-vs-transformers.md) is compared here; llama and qwen3, where all three agree, measure what
agreement looks like.

Tolerances (max |tfb - llama.cpp| against the largest |logit|, and the same argmax everywhere), float32
files only: llama.cpp rounds the activations of its products with 16-bit and quantized weights (to F16,
BF16 or 8-bit blocks), which moves tiny models' logits by 0.3-10 % and can flip an expert choice.
- REL = 1e-4: what remains in float32 is the order of sums and ggml's exp; measured 1e-6 to 1.1e-5.
- GELU_REL = 5e-3: ggml's CPU GELU (tanh form) reads a table indexed by the input rounded to float16
  (ggml-cpu/vec.h, GGML_GELU_FP16); transformers and tfb both differ from it by 4e-4 to 2e-3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import assert_logits_match, ids_for
from llama_reference import CONTEXT_STEP, llama_cpp_logits

import tfb

REL = 1e-4
GELU_REL = 5e-3
GELU = {"starcoder2", "phi2", "gemma", "gemma2", "gemma3", "gpt2"}

# family -> what llama.cpp decides there (the rows of docs/llama-cpp-vs-transformers.md)
FOLLOWS = {
    "mistral": "no sliding window on llama files (window 8, 40 positions)",
    "starcoder2": "no sliding window",
    "phi3": "no sliding window",
    "phi3_window": "the window the file has is switched off (window 8, 40 positions)",
    "mistral3": "YaRN with mscale = 1 and mscale_all_dim as the log multiplier; query temperature",
    "qwen3moe": "always renormalised top-k weights",
    "phi2": "the file's head counts and feed-forward length",
    "qwen2": "Q/K/V biases",
    "llama3": "the stored rope frequency factors",
    "glm4": "adjacent-pair rope over the rotary half, QKV bias",
    "gpt-oss": "YaRN rounding and betas, sinks, alternating windows",
    "gemma2": "query scale from the layer count, soft-caps, windows every other layer",
    "gemma3": "five local layers to one global, local rope base 10000",
    "smollm3": "no rope on every fourth layer",
}
AGREE = ["llama", "qwen3"]
SEQUENCE = {"mistral3": 100}  # positions 0..99: mistral3's query temperature steps 1, 2, 3


def compare_with_llama_cpp(path: Path, family: str, batch: int, seq: int, context: int | None = None) -> None:
    """tfb (with `context_length=context`) against llama.cpp (a context of `context`, default 256)."""
    model = tfb.load(path, context_length=context)
    ids = ids_for(model.config.vocab_size, batch, seq)
    with torch.no_grad():
        ours = model(ids)
    reference = llama_cpp_logits(path, ids, context or CONTEXT_STEP)
    assert_logits_match(ours, reference, GELU_REL if family in GELU else REL)


@pytest.mark.parametrize("family", AGREE + list(FOLLOWS))
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    _, path = tiny_model(family, "f32")
    compare_with_llama_cpp(path, family, 2 if family not in SEQUENCE else 1, SEQUENCE.get(family, 40))


# (family, context): longrope's factor set follows the run context as in llama.cpp, which rounds it up to a
# multiple of 256 first: phi3_longrope and phimoe (Phi-3.5-MoE's layout: mscale, biases, output bias) have
# an original context of 256 (short factors at 256, long at 1024); phi3_longrope_32 one of 32, where a
# context of 32 runs the long factors (rounded to 256)
LONGROPE = [("phi3_longrope", 256), ("phi3_longrope", 1024), ("phimoe", 256), ("phimoe", 1024),
            ("phi3_longrope_32", 32)]


@pytest.mark.parametrize(("family", "context"), LONGROPE)
def test_longrope_factors_follow_llama_cpp_context(tiny_model, family: str, context: int) -> None:
    _, path = tiny_model(family, "f32")
    compare_with_llama_cpp(path, family, 2, 40, context)


def test_phi3_longrope_32_runs_long_factors_at_its_original_context(tiny_model) -> None:
    """The case above is the long factor set (else the comparison would say nothing about rounding)."""
    _, path = tiny_model("phi3_longrope_32", "f32")
    at_original = tfb.load(path, context_length=32).rotaries[0].freq_factors
    long = tfb.load(path, context_length=128).rotaries[0].freq_factors
    assert at_original is not None and long is not None and torch.equal(at_original, long)
    assert float(long.max()) > 7.0  # the long factors 1.0 ... 7.3, not the short 1.0 ... 1.7


# spec changes that llama.cpp's logits tell apart: the comparison fails on the wrong choice
WRONG = [
    ("glm4", "mixer: {rope: {pairing: half}}"),  # NEOX rope, as the glm4 spec had it
    ("phimoe", "norm: {kind: layernorm, bias: required}"),  # transformers' LayerNorm
    ("phimoe", "hparams: {expert_weights_norm: false}"),  # the chosen experts' weights not renormalised
]


@pytest.mark.parametrize(("family", "change"), WRONG)
def test_a_wrong_spec_differs_from_llama_cpp(tiny_model, tmp_path: Path, family: str, change: str) -> None:
    _, path = tiny_model(family, "f32")
    spec = tmp_path / "wrong.yaml"
    spec.write_text(f"extends: {family}\ndescription: {family} with one change\nmatch: [{family}]\n{change}\n")
    model = tfb.load(path, spec=str(spec))
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        ours = model(ids)
    reference = llama_cpp_logits(path, ids)
    assert (ours - reference).abs().max() > 0.05 * reference.abs().max()
