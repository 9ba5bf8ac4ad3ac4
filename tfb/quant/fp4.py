"""The 4-bit float formats MXFP4 and NVFP4: E2M1 weights under a power-of-two (E8M0) or UE4M3 scale.

Both decode a weight as kvalues_fp4[nibble] (the E2M1 value doubled) times a scale that ggml halves to
compensate; the scale tables below reproduce ggml_e8m0_to_fp32_half and ggml_ue4m3_to_fp32 bit for bit,
including their edge cases (E8M0 0 and 1 are subnormal, 255 is 2**127 rather than NaN; UE4M3 0x7F is 0).
"""

from __future__ import annotations

import functools

import torch

from tfb.quant.common import field, look_up, nibble_lookup, nibble_tables, register_kernel, scale_planes

KVALUES_FP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


@functools.cache
def _fp4_tables() -> torch.Tensor:
    return nibble_tables(KVALUES_FP4)


@functools.cache
def _e8m0_half() -> torch.Tensor:
    """E8M0 byte x -> 2**(x - 128) as float32, built from its bits as ggml does."""
    bits = [0x00200000 << x if x < 2 else (x - 1) << 23 for x in range(256)]
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


def _ue4m3_half(x: int) -> float:
    if x in (0, 0x7F):
        return 0.0
    exponent, mantissa = (x >> 3) & 0x0F, x & 0x07  # bit 7 is ignored, as in ggml
    raw = mantissa * 2.0**-9 if exponent == 0 else (1 + mantissa / 8) * 2.0 ** (exponent - 7)
    return raw * 0.5  # exact: every value is a short binary fraction


@functools.cache
def _ue4m3_table() -> torch.Tensor:
    return torch.tensor([_ue4m3_half(x) for x in range(256)], dtype=torch.float32)


@register_kernel("MXFP4", 32)
def _mxfp4(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # e (E8M0), qs[16]: weights 0-15 are the low nibbles, 16-31 the high nibbles
    scale = look_up(_e8m0_half(), field(blocks, 0, 1)).unsqueeze(-1)
    scale_planes(nibble_lookup(field(blocks, 1, 17), _fp4_tables()), scale, out.view(-1, 2, 16))


@register_kernel("NVFP4", 64)
def _nvfp4(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d[4] (UE4M3, one per 16 weights), qs[32]: sub-block s is the low then high nibbles of qs[8s..8s+7]
    m = blocks.shape[0]
    scale = look_up(_ue4m3_table(), field(blocks, 0, 4)).view(m, 4, 1, 1)
    values = nibble_lookup(field(blocks, 4, 36).view(m, 4, 8), _fp4_tables())
    scale_planes(values, scale, out.view(m, 4, 2, 8), dim=2)
