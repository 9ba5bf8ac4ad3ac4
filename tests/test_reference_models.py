"""tfb's logits equal transformers' on the same weights, through llama.cpp's own converter."""

from __future__ import annotations

import pytest
import torch

import tfb

# (family, storage type): every seed family in F32, the storage types on the dense baselines
CASES = [
    ("llama", "f32"), ("llama_tied", "f32"), ("llama3", "f32"), ("qwen2", "f32"), ("qwen3", "f32"),
    ("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"), ("llama", "q4_0"),
    ("qwen2", "f16"), ("qwen3", "bf16"), ("qwen3", "q8_0"), ("qwen3", "q4_0"),
]
SHAPES = [(1, 1), (3, 1), (2, 37)]  # batch x sequence; 37 crosses llama3's original context of 16


def _ids(vocab: int, batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(batch * 100 + seq))


@pytest.mark.parametrize(("family", "outtype"), CASES)
def test_logits_match_transformers(tiny_model, logits_match, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    model = tfb.load(path)
    for batch, seq in SHAPES:
        ids = _ids(model.config.vocab_size, batch, seq)
        with torch.no_grad():
            logits_match(model(ids), reference(ids).logits)


def test_dtype_choices_keep_agreement(tiny_model, logits_match) -> None:
    """An F16 file run in float16 computes with the file's weights as they are (no copy)."""
    reference, path = tiny_model("llama", "f16")
    model = tfb.load(path, dtype=torch.float16)
    assert model.blocks[0].attn.q.weight is not None and model.blocks[0].attn.q.weight.dtype == torch.float16
    ids = _ids(model.config.vocab_size, 2, 9)
    with torch.no_grad():
        ours, ref = model(ids), reference(ids).logits
    assert (ours - ref).abs().max() <= 2e-2 * ref.abs().max()
