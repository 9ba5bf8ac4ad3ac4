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
            preround(model, outtype, fam.keep_f32, fam.transposed)
            path = convert(model, fam, outtype, tmp_path_factory.mktemp(f"{family}-{outtype}"))
            _BUILT[key] = (model, path)
        return _BUILT[key]

    return make
