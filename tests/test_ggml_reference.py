"""tfb's dequantizers against llama.cpp's own C ones, bit for bit: ggml-quants.c from the pinned
llama-cpp-python sdist, compiled by tools/ggml_quants.py. The blocks are random (finite float16 scales,
extreme ones included: largest, subnormal, zero) and, for the formats whose reference quantizer needs no
tables, made by ggml's own `quantize_row_*_ref`. Both tfb paths are checked: the torch dequantizers and
PackedTensor.dequantize (the native kernels where they are built)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from ggml_blocks import F16_FIELDS, random_blocks, set_f16
from ggml_quants import QUANTIZABLE, GGMLQuants

from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.quant import PackedTensor
from tfb.quant.blocks import DEQUANTIZERS

# every block format of a model file (F16/BF16 are conversions, not in ggml-quants.c)
BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "IQ1_M",
               "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
               "NVFP4", "Q1_0", "Q2_0"]
# float16 patterns: largest, smallest normal, largest and smallest subnormal, zeros, one, negative one
EXTREME_F16 = np.array([0x7BFF, 0xFBFF, 0x0400, 0x03FF, 0x0001, 0x8001, 0x0000, 0x8000, 0x3C00, 0xBC00],
                       dtype=np.uint16)


@pytest.fixture(scope="module")
def ggml() -> GGMLQuants:
    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler to build ggml-quants.c")
    try:
        return GGMLQuants()
    except subprocess.CalledProcessError as e:
        pytest.fail(f"ggml-quants.c did not compile: {e.stderr.decode()[-2000:]}")


def assert_same_values(name: str, raw: np.ndarray, ggml: GGMLQuants) -> None:
    """Both tfb paths give ggml's float32 bits (NaN where ggml gives NaN: MXFP4's exponent 255)."""
    gtype = GGML_TYPE_BY_NAME[name]
    want = ggml.dequantize(name, raw, gtype.block_size)
    blocks = torch.from_numpy(raw)
    packed = PackedTensor(blocks, gtype, (raw.shape[0], gtype.block_size))
    for path, got in (("torch", DEQUANTIZERS[name](blocks).numpy()), ("PackedTensor", packed.dequantize().numpy())):
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan), f"{name} ({path}): NaN where ggml has none, or the reverse"
        mismatch = np.flatnonzero(got.view(np.uint32)[~nan] != want.view(np.uint32)[~nan])
        assert mismatch.size == 0, f"{name} ({path}): {mismatch.size} values differ from ggml's, first at {mismatch[0]}"


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_random_blocks_equal_ggml(ggml: GGMLQuants, name: str) -> None:
    assert_same_values(name, random_blocks(name, 257, np.random.default_rng(11)), ggml)


@pytest.mark.parametrize("name", [n for n in BLOCK_TYPES if n in F16_FIELDS or n == "IQ1_M"])
def test_extreme_scales_equal_ggml(ggml: GGMLQuants, name: str) -> None:
    raw = random_blocks(name, 10 * len(EXTREME_F16), np.random.default_rng(12))
    set_f16(raw, name, np.repeat(EXTREME_F16, 10))
    assert_same_values(name, raw, ggml)


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_ggml_quantized_blocks_equal_ggml(ggml: GGMLQuants, name: str) -> None:
    """Blocks as llama.cpp's quantizer writes them: normal values at several magnitudes, a zero block,
    and one with a single outlier."""
    gtype = GGML_TYPE_BY_NAME[name]
    rng = np.random.default_rng(13)
    rows = [rng.standard_normal(gtype.block_size) * scale for scale in (1e-3, 0.05, 1.0, 30.0)]
    rows += [np.zeros(gtype.block_size), np.where(np.arange(gtype.block_size) == 3, 50.0, 0.01)]
    raw = ggml.quantize(name, np.concatenate(rows), gtype.type_size, gtype.block_size)
    assert_same_values(name, raw, ggml)
