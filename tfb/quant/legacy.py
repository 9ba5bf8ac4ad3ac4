"""The 32-weight formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, and the 1- and 2-bit Q1_0 and Q2_0.

Each block is a float16 scale d (Q4_1, Q5_1: and an offset m) and packed integers q; a weight is d * q
(+ m), computed in float32 as the reference does: one multiply, then one add for the offset formats.
"""

from __future__ import annotations

import functools

import torch

from tfb.quant.common import byte_table, f16, field, look_up, nibbles, register_kernel, scale_planes


@functools.cache
def _bit_spread() -> torch.Tensor:
    """Byte -> int64 whose byte i is bit i of the byte: the fifth bit of eight Q5 weights at once."""
    return byte_table(lambda b: [(b >> i) & 1 for i in range(8)], torch.int64)


def _five_bit(low_bytes: torch.Tensor, high_bits: torch.Tensor) -> torch.Tensor:
    """Q5 blocks -> uint8 [2, m, 16]: weights 0-15 and 16-31 (0..31), from qs nibbles and the 4 qh bytes."""
    low = nibbles(low_bytes).view(torch.int64)  # [2, m, 2]
    # qh byte k holds the fifth bits of weights 8k..8k+7: bytes 0-1 for the low plane, 2-3 for the high
    index = high_bits.view(-1, 2, 2).transpose(0, 1).contiguous()  # [2, m, 2]: in plane order
    high = look_up(_bit_spread(), index)
    return (low | (high << 4)).view(torch.uint8)


def _halves(out: torch.Tensor) -> torch.Tensor:
    """A [m, 32] output as [m, 2, 16]: the weights of the low and of the high nibbles."""
    return out.view(-1, 2, 16)


def _scale(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """A float16 field as float32 [m, 1, 1], to broadcast over _halves."""
    return f16(blocks, start).unsqueeze(-1)


@register_kernel("Q4_0", 32)
def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    q = nibbles(field(blocks, 2, 18)).view(torch.int8).sub_(8)
    scale_planes(q, _scale(blocks, 0), _halves(out))


@register_kernel("Q4_1", 32)
def _q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    scale_planes(nibbles(field(blocks, 4, 20)), _scale(blocks, 0), _halves(out))
    out.add_(f16(blocks, 2))


@register_kernel("Q5_0", 32)
def _q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    q = _five_bit(field(blocks, 6, 22), field(blocks, 2, 6)).view(torch.int8).sub_(16)
    scale_planes(q, _scale(blocks, 0), _halves(out))


@register_kernel("Q5_1", 32)
def _q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    scale_planes(_five_bit(field(blocks, 8, 24), field(blocks, 4, 8)), _scale(blocks, 0), _halves(out))
    out.add_(f16(blocks, 2))


@register_kernel("Q8_0", 32)
def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    torch.mul(field(blocks, 2, 34, torch.int8), f16(blocks, 0), out=out)


@register_kernel("Q8_1", 32)
def _q8_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, then s = d * sum(q) (only used by dot products), then the quants.
    torch.mul(field(blocks, 4, 36, torch.int8), f16(blocks, 0), out=out)


@functools.cache
def _signs_of_bits() -> torch.Tensor:
    """Byte -> int64 whose byte i is +1 where bit i is set, else -1: eight Q1_0 weights (in units of d)."""
    return byte_table(lambda b: [1 if (b >> i) & 1 else -1 for i in range(8)], torch.int64)


@register_kernel("Q1_0", 128)
def _q1_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # A set bit is +d, a clear one -d (ggml: `bit ? d : -d`); d * +-1 is exactly that, -0.0 included.
    signs = look_up(_signs_of_bits(), field(blocks, 2, 18)).view(torch.int8)
    torch.mul(signs, f16(blocks, 0), out=out)


@functools.cache
def _two_bit_minus_one() -> torch.Tensor:
    """Byte -> int32 of its four 2-bit fields, low bits first, each minus 1 (00=-1, 01=0, 10=+1, 11=+2)."""
    return byte_table(lambda b: [((b >> (2 * i)) & 3) - 1 for i in range(4)], torch.int32)


@register_kernel("Q2_0", 64)
def _q2_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    q = look_up(_two_bit_minus_one(), field(blocks, 2, 18)).view(torch.int8)
    torch.mul(q, f16(blocks, 0), out=out)
