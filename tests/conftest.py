from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
            preround(model, outtype, fam.keep_f32)
            path = convert(model, fam, outtype, tmp_path_factory.mktemp(f"{family}-{outtype}"))
            _BUILT[key] = (model, path)
        return _BUILT[key]

    return make


def assert_logits_match(ours: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4) -> None:
    """max |ours - reference| <= rel * max |reference|, and the same argmax at every position."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().item()
    diff = (ours - reference).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} x max|logit| {scale:.3g}"
    assert torch.equal(ours.argmax(-1), reference.argmax(-1)), "argmax differs"


@pytest.fixture
def logits_match():
    return assert_logits_match
