"""The k-quants: 256-weight super-blocks of 16 or 8 sub-blocks, each with its own small integer scale.

A sub-block's float scale is d * scale (and for Q2_K, Q4_K, Q5_K its offset dmin * min), computed in
float32 first, exactly as the reference does; then weight = scale * q (- offset).
"""

from __future__ import annotations

import torch

from tfb.quant.common import bit_planes, f16, field, nibbles, register_kernel


def _scaled(q: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, offset: torch.Tensor | None = None) -> None:
    """out = scale * q (- offset) per sub-block: q [m, ...] integers in weight order, scale/offset [m, s].

    q is built in weight order first so that the float32 work is one contiguous multiply (and subtract):
    torch is several times slower on multiplies with several strided, broadcast operands.
    """
    m, sub = scale.shape
    view = out.view(m, sub, -1)
    torch.mul(q.reshape(m, sub, -1), scale.unsqueeze(-1), out=view)
    if offset is not None:
        view.sub_(offset.unsqueeze(-1))


def _two_bit_fields(packed: torch.Tensor) -> torch.Tensor:
    """qs[64] of Q2_K/Q3_K/TQ2_0 -> [m, 2, 4, 32]: weight 128h + 32s + p is bits 2s..2s+1 of qs[32h + p]."""
    return bit_planes(packed.view(-1, 2, 32), 2, 4, dim=-2)


@register_kernel("Q2_K", 256)
def _q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # scales[16] (low nibble: scale, high nibble: min), qs[64], d, dmin
    scales = field(blocks, 0, 16)
    q = _two_bit_fields(field(blocks, 16, 80))
    _scaled(q, f16(blocks, 80) * (scales & 0x0F), out, f16(blocks, 82) * (scales >> 4))


def _q3_k_scales(packed: torch.Tensor) -> torch.Tensor:
    """The 16 signed 6-bit scales of Q3_K: low 4 bits from bytes 0-7, high 2 bits from bytes 8-11."""
    low = torch.cat([packed[:, :8] & 0x0F, packed[:, :8] >> 4], dim=1)
    high = torch.cat([(packed[:, 8:12] >> (2 * k)) & 0x03 for k in range(4)], dim=1)
    return (low | (high << 4)).view(torch.int8) - 32


@register_kernel("Q3_K", 256)
def _q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # hmask[32], qs[64], scales[12], d. Weight 32b + p (b = 4h + s): 2-bit field as in Q2_K plus hmask
    # bit b of hmask[p]; q = low - 4 where that bit is clear, i.e. (low | 4 * bit) - 4
    m = blocks.shape[0]
    low = _two_bit_fields(field(blocks, 32, 96)).view(torch.int64).view(m, -1)
    high = bit_planes(field(blocks, 0, 32), 1, 8, dim=-2).view(torch.int64).view(m, -1)
    q = (low | (high << 2)).view(torch.int8).sub_(4)
    _scaled(q, f16(blocks, 108) * _q3_k_scales(field(blocks, 96, 108)), out)


def _k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 unsigned 6-bit scales and mins of Q4_K/Q5_K, from their 12 bytes."""
    scale_low, min_low, rest = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([scale_low & 0x3F, (rest & 0x0F) | ((scale_low >> 2) & 0x30)], dim=1)
    mins = torch.cat([min_low & 0x3F, (rest >> 4) | ((min_low >> 2) & 0x30)], dim=1)
    return scales, mins


def _eight_sub_blocks(blocks: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """Q4_K/Q5_K: q in weight order, 8 sub-blocks of 32; weight = d * scale * q - dmin * min."""
    scales, mins = _k_scales_mins(field(blocks, 4, 16))
    _scaled(q, f16(blocks, 0) * scales, out, f16(blocks, 2) * mins)


@register_kernel("Q4_K", 256)
def _q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, dmin, scales[12], qs[128]: sub-blocks 2c and 2c+1 are the low and high nibbles of qs[32c..32c+31]
    _eight_sub_blocks(blocks, nibbles(field(blocks, 16, 144).view(-1, 4, 32), dim=-2), out)


@register_kernel("Q5_K", 256)
def _q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, dmin, scales[12], qh[32], qs[128]: as Q4_K, plus the fifth bit of sub-block g from bit g of qh[p]
    m = blocks.shape[0]
    low = nibbles(field(blocks, 48, 176).view(m, 4, 32), dim=-2).view(torch.int64).view(m, -1)
    high = bit_planes(field(blocks, 16, 48), 1, 8, dim=-2).view(torch.int64).view(m, -1)
    _eight_sub_blocks(blocks, (low | (high << 4)).view(torch.uint8), out)


@register_kernel("Q6_K", 256)
def _q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # ql[128], qh[64], scales[16] (int8), d. Weight 128h + 64k + p: nibble k of ql[64h + p], and
    # weight 128h + 32s + p: bits 2s.. of qh[32h + p]; q = (low | high << 4) - 32
    m = blocks.shape[0]
    low = nibbles(field(blocks, 0, 128).view(m, 2, 64), dim=-2).view(torch.int64).view(m, -1)
    high = _two_bit_fields(field(blocks, 128, 192)).view(torch.int64).view(m, -1)
    q = (low | (high << 4)).view(torch.int8).sub_(32)
    _scaled(q, f16(blocks, 208) * field(blocks, 192, 208, torch.int8), out)


@register_kernel("Q8_K", 256)
def _q8_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # float32 d, qs[256] (int8), bsums[16] (only used by dot products)
    torch.mul(field(blocks, 4, 260, torch.int8), field(blocks, 0, 4, torch.float32), out=out)
