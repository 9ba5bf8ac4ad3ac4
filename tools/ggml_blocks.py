"""Random valid ggml blocks, for tests and for models of types no Python quantizer writes.

Random bytes are valid blocks of every type except for their float16 scale fields, which must be
finite; those sit at fixed byte offsets (ggml-common.h).
"""

from __future__ import annotations

import numpy as np

from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME

# Byte offsets of the float16 fields of each block. IQ1_M spreads its d over the top nibbles of bytes
# 49, 51, 53 and 55; the float types are all float.
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ2_XXS": [0],
              "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0], "IQ4_NL": [0],
              "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64], "Q1_0": [0], "Q2_0": [0]}
IQ1_M_D_BYTES = [49, 51, 53, 55]  # d's nibble k is the top nibble of byte 49 + 2k


def finite_f16(bits: np.ndarray) -> np.ndarray:
    """uint16 float16 patterns with Inf/NaN (exponent 31) moved to exponent 15."""
    bits = bits.copy()
    bits[(bits >> 10) & 0x1F == 0x1F] ^= 0x4000
    return bits


def set_f16(raw: np.ndarray, name: str, values: np.ndarray | int) -> None:
    """Write float16 bit patterns into every float16 scale field of the blocks."""
    values = np.broadcast_to(np.asarray(values, dtype=np.uint16), (len(raw),))
    if name == "IQ1_M":
        for k, byte in enumerate(IQ1_M_D_BYTES):
            raw[:, byte] = (raw[:, byte] & 0x0F) | (((values >> (4 * k)) & 0x0F) << 4).astype(np.uint8)
        return
    for offset in F16_FIELDS.get(name, []):
        raw[:, offset:offset + 2] = values.astype("<u2").view(np.uint8).reshape(len(raw), 2)


def random_blocks(name: str, n: int, rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """n random blocks of `name` that decode to finite numbers: random bytes except the float fields,
    which are random finite values, or `scale` (with +-50% jitter) when given."""
    raw = rng.integers(0, 256, size=(n, GGML_TYPE_BY_NAME[name].type_size), dtype=np.uint8)
    if name in ("F16", "BF16"):
        bits = raw.view(np.uint16)
        exponent_mask = 0x7C00 if name == "F16" else 0x7F80
        bits[bits & exponent_mask == exponent_mask] ^= 0x4000
    elif name in ("F32", "F64", "Q8_K"):
        floats = rng.standard_normal(n) * np.exp(rng.uniform(-80, 80, n))
        if name == "Q8_K":
            raw[:, 0:4] = floats.astype(np.float32).reshape(n, 1).view(np.uint8)
        else:
            raw[:] = floats.astype(np.float32 if name == "F32" else np.float64).reshape(n, 1).view(np.uint8)
    elif name in F16_FIELDS or name == "IQ1_M":
        if scale is None:
            bits = finite_f16(rng.integers(0, 1 << 16, size=n, dtype=np.uint16))
        else:
            bits = (scale * rng.uniform(0.5, 1.5, n)).astype(np.float16).view(np.uint16)
        set_f16(raw, name, bits)
    return raw
