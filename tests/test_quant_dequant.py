"""Every ggml storage type's dequantizer against the `gguf` package's reference, bit for bit.

The reference is `gguf.quants.dequantize` (numpy). Types it does not implement are checked against short
numpy transcriptions of ggml-quants.c below (Q1_0, Q2_0, Q8_K), of the block layout in ggml-common.h
(Q8_1, which ggml never dequantizes), or of a plain cast (I8, I16, I32, F64). Blocks come from
`gguf.quants.quantize` where the package can quantize a type, and from random bytes with every float16
scale field made finite, including extreme, subnormal and zero scales. tests/test_ggml_reference.py checks
every block format against ggml-quants.c itself as well.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import pytest
import torch
from ggml_blocks import F16_FIELDS, random_blocks, set_f16
from gguf import quants
from gguf.constants import GGMLQuantizationType

import tfb.quant.common as common
from tfb.errors import WeightError
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME, GGMLType
from tfb.quant import PackedTensor, is_supported
from tfb.quant.blocks import DEQUANTIZERS

MODEL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
               "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
               "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]
OTHER_TYPES = ["Q8_1", "Q8_K", "I8", "I16", "I32", "F64"]
ALL_TYPES = MODEL_TYPES + OTHER_TYPES

# Extreme scales overflow to inf on purpose (MXFP4 exponent 255, Q8_K d near float32's maximum).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# float16 bit patterns: largest, smallest normal, largest and smallest subnormal, zeros, one
EXTREME_F16 = [0x7BFF, 0xFBFF, 0x0400, 0x03FF, 0x0001, 0x8001, 0x0000, 0x8000, 0x3C00]


def type_size(name: str) -> int:
    return GGML_TYPE_BY_NAME[name].type_size


def block_size(name: str) -> int:
    return GGML_TYPE_BY_NAME[name].block_size


# ---------------------------------------------------------------- references


def _f16(raw: np.ndarray, start: int) -> np.ndarray:
    return raw[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _q1_0(raw: np.ndarray) -> np.ndarray:
    # dequantize_row_q1_0: bit j of qs[j / 8] (low bit first) ? d : -d
    d = _f16(raw, 0)
    bits = np.unpackbits(raw[:, 2:18], axis=1, bitorder="little")
    return np.where(bits == 1, d, -d).astype(np.float32)


def _q2_0(raw: np.ndarray) -> np.ndarray:
    # dequantize_row_q2_0: q = (qs[j / 4] >> 2 * (j % 4)) & 3, y = ((int) q - 1) * d
    d = _f16(raw, 0)
    q = (raw[:, 2:18, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    return (q.reshape(len(raw), 64).astype(np.int32) - 1).astype(np.float32) * d


def _q8_1(raw: np.ndarray) -> np.ndarray:
    # block_q8_1: d, s = d * sum(qs), qs[32]; a weight is qs * d
    return raw[:, 4:36].copy().view(np.int8).astype(np.float32) * _f16(raw, 0)


def _q8_k(raw: np.ndarray) -> np.ndarray:
    # dequantize_row_q8_K: x.d (float32) * x.qs[j]
    return raw[:, 0:4].copy().view(np.float32) * raw[:, 4:260].copy().view(np.int8).astype(np.float32)


def _cast(dtype: type) -> Callable[[np.ndarray], np.ndarray]:
    return lambda raw: raw.copy().view(dtype).astype(np.float32)


TRANSCRIPTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q1_0": _q1_0, "Q2_0": _q2_0, "Q8_1": _q8_1, "Q8_K": _q8_k,
    "I8": _cast(np.int8), "I16": _cast(np.int16), "I32": _cast(np.int32), "F64": _cast(np.float64),
}


def reference(name: str, raw: np.ndarray) -> np.ndarray:
    """[n, type_size] uint8 blocks -> float32 [n, block_size] by the reference."""
    transcription = TRANSCRIPTIONS.get(name)
    values = transcription(raw) if transcription else quants.dequantize(raw, GGMLQuantizationType[name])
    return np.asarray(values, dtype=np.float32).reshape(len(raw), block_size(name))


def check(name: str, raw: np.ndarray) -> None:
    expected = torch.from_numpy(reference(name, raw))
    assert not torch.isnan(expected).any(), f"{name}: test blocks give NaN in the reference"
    got = DEQUANTIZERS[name](torch.from_numpy(raw))
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert not torch.isnan(got).any()
    assert torch.equal(got, expected), f"{name}: {(got != expected).sum().item()} values differ"
    # torch.equal takes -0.0 == 0.0; the bit patterns must match too
    assert torch.equal(got.contiguous().view(torch.int32), expected.view(torch.int32)), f"{name}: signed zeros"


# ---------------------------------------------------------------- block makers


def quantized_blocks(name: str, rng: np.random.Generator) -> np.ndarray | None:
    """Blocks made by gguf.quants.quantize from random weights, or None where it cannot quantize `name`."""
    qtype = getattr(GGMLQuantizationType, name, None)
    if qtype is None:
        return None
    weights = (rng.standard_normal((3, 7 * block_size(name))) * 0.05).astype(np.float32)
    weights[0, :block_size(name)] = 0.0  # an all-zero block
    try:
        data = quants.quantize(weights, qtype)
    except NotImplementedError:
        return None
    return np.ascontiguousarray(data).view(np.uint8).reshape(-1, type_size(name))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ALL_TYPES)
def test_registered(name: str) -> None:
    assert name in DEQUANTIZERS
    # weights load from model storage types only; Q8_1/Q8_K are llama.cpp's intermediates
    assert is_supported(GGML_TYPE_BY_NAME[name]) == (name in MODEL_TYPES)


# the types the gguf package can quantize; random blocks (below) cover every type
QUANTIZABLE = [name for name in ALL_TYPES if quantized_blocks(name, np.random.default_rng(1)) is not None]


def test_gguf_quantizes_the_common_types() -> None:
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16"} <= set(QUANTIZABLE)


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_quantized_by_gguf(name: str) -> None:
    raw = quantized_blocks(name, np.random.default_rng(1))
    assert raw is not None
    check(name, raw)


@pytest.mark.parametrize("name", ALL_TYPES)
def test_random_blocks(name: str) -> None:
    rng = np.random.default_rng(2)
    check(name, random_blocks(name, 21, rng))  # 3 rows x 7 blocks
    check(name, random_blocks(name, 1, rng))
    # enough blocks that every grid row, sign pattern and scale value turns up
    check(name, random_blocks(name, 2048 if name.startswith("IQ1") else 600, rng))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_all_zero_blocks(name: str) -> None:
    check(name, np.zeros((5, type_size(name)), dtype=np.uint8))


@pytest.mark.parametrize("name", [*sorted(F16_FIELDS), "IQ1_M"])
def test_extreme_scales(name: str) -> None:
    rng = np.random.default_rng(3)
    for value in EXTREME_F16:
        raw = random_blocks(name, 16, rng)
        set_f16(raw, name, value)
        check(name, raw)
    mixed = random_blocks(name, len(EXTREME_F16), rng)
    set_f16(mixed, name, np.array(EXTREME_F16))
    check(name, mixed)


def test_q8_k_extreme_scales() -> None:
    raw = random_blocks("Q8_K", 6, np.random.default_rng(4))
    raw[:, 0:4] = np.array([3.4e38, -3.4e38, 1e-45, 1e-38, 0.0, -0.0], np.float32).reshape(6, 1).view(np.uint8)
    check("Q8_K", raw)


def test_mxfp4_edge_exponents() -> None:
    # E8M0 0 and 1 give subnormal scales, 254 and 255 overflow to inf with large values
    raw = random_blocks("MXFP4", 8, np.random.default_rng(5))
    raw[:, 0] = [0, 1, 2, 126, 127, 128, 254, 255]
    check("MXFP4", raw)


def test_nvfp4_edge_scales() -> None:
    # UE4M3: 0 and 0x7F decode to 0; bit 7 is ignored except in 0xFF; 0x01..0x07 are subnormal
    raw = random_blocks("NVFP4", 4, np.random.default_rng(6))
    raw[:, 0:4] = np.array([[0x00, 0x7F, 0x80, 0xFF], [0x01, 0x07, 0x08, 0x7E],
                            [0x81, 0xFE, 0x38, 0x3F], [0x40, 0x77, 0x78, 0x0F]], dtype=np.uint8)
    check("NVFP4", raw)


@pytest.mark.parametrize("name", MODEL_TYPES)
def test_many_small_chunks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # slices of one to a few blocks, and an output on the huge-page path
    monkeypatch.setattr(common, "CHUNK_WEIGHTS", 96)
    monkeypatch.setattr(common, "HUGE_OUTPUT_BYTES", 0)
    check(name, random_blocks(name, 7, np.random.default_rng(7)))


def test_huge_page_output_outlives_its_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "HUGE_OUTPUT_BYTES", 0)
    out = common.empty_float32(3, 5)
    gc.collect()
    out.fill_(2.5)
    assert out.shape == (3, 5) and out.is_contiguous() and float(out.sum()) == 37.5


def packed(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[PackedTensor, np.ndarray]:
    ggml_type = GGML_TYPE_BY_NAME[name]
    n_blocks = int(np.prod(shape)) // ggml_type.block_size
    raw = random_blocks(name, n_blocks, rng)
    expected = reference(name, raw).reshape(shape)
    return PackedTensor(torch.from_numpy(raw.reshape(-1)), ggml_type, shape, "blk.0.ffn_up.weight"), expected


@pytest.mark.parametrize("huge_pages", [False, True], ids=["small", "huge-page output"])
@pytest.mark.parametrize("name", ["Q4_K", "IQ2_XS", "Q8_0", "NVFP4"])
def test_packed_tensor_2d_and_rows(name: str, huge_pages: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if huge_pages:  # PackedTensor.dequantize's results of 8 MiB and more: a mapping of their own
        monkeypatch.setattr(common, "HUGE_OUTPUT_BYTES", 0)
    tensor, expected = packed(name, (6, 512), np.random.default_rng(8))
    assert torch.equal(tensor.dequantize(), torch.from_numpy(expected))
    assert torch.equal(tensor[1:4].dequantize(), torch.from_numpy(expected[1:4]))
    assert torch.equal(tensor[5].dequantize(), torch.from_numpy(expected[5]))
    assert tensor.dequantize(torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["Q6_K", "MXFP4", "IQ4_NL"])
def test_packed_tensor_3d_experts(name: str) -> None:
    tensor, expected = packed(name, (3, 4, 256), np.random.default_rng(9))
    assert torch.equal(tensor.dequantize(), torch.from_numpy(expected))
    assert torch.equal(tensor[2].dequantize(), torch.from_numpy(expected[2]))
    assert torch.equal(tensor[0:2].dequantize(), torch.from_numpy(expected[0:2]))


@pytest.mark.parametrize("ggml_type", [GGML_TYPE_BY_NAME["I64"], GGMLType(99, "Q9_9", 32, 20)])
def test_unsupported_type_names_tensor_and_type(ggml_type: GGMLType) -> None:
    raw = torch.zeros(4 * ggml_type.type_size, dtype=torch.uint8)
    with pytest.raises(WeightError) as error:
        PackedTensor(raw, ggml_type, (4, ggml_type.block_size), "blk.3.attn_q.weight")
    assert "blk.3.attn_q.weight" in str(error.value) and ggml_type.name in str(error.value)
