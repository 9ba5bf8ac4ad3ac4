"""The ternary formats TQ1_0 (base-3 packing, 1.6 bits a weight) and TQ2_0 (2 bits a weight).

A weight is d * t with t in {-1, 0, 1}.
"""

from __future__ import annotations

import functools

import torch

from tfb.quant.common import bit_planes, byte_table, f16, field, look_up, register_kernel

POWERS_OF_3 = (1, 3, 9, 27, 81)


def _trits(byte: int) -> list[int]:
    """The five digits of a TQ1_0 byte minus one, as ggml reads them: ((byte * 3**k mod 256) * 3) >> 8."""
    return [((((byte * p) & 0xFF) * 3) >> 8) - 1 for p in POWERS_OF_3] + [0, 0, 0]


@functools.cache
def _trit_table() -> torch.Tensor:
    return byte_table(_trits, torch.int64)


@register_kernel("TQ1_0", 256)
def _tq1_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # qs[48], qh[4], d. Digit k of qs[p] is weight 32k + p for p < 32, 160 + 16k + (p - 32) after;
    # digit k (< 4) of qh[p] is weight 240 + 4k + p.
    m = blocks.shape[0]
    digits = look_up(_trit_table(), field(blocks, 0, 52)).view(torch.int8).view(m, 52, 8)
    parts = [digits[:, 0:32, :5], digits[:, 32:48, :5], digits[:, 48:52, :4]]
    trits = torch.cat([part.transpose(1, 2).reshape(m, -1) for part in parts], dim=1)
    torch.mul(trits, f16(blocks, 52), out=out)


@register_kernel("TQ2_0", 256)
def _tq2_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # qs[64], d: weight 128h + 32s + p is bits 2s..2s+1 of qs[32h + p], minus one
    m = blocks.shape[0]
    trits = bit_planes(field(blocks, 0, 64).view(m, 2, 32), 2, 4, dim=-2).view(torch.int8).sub_(1)
    torch.mul(trits.view(m, -1), f16(blocks, 64), out=out)
