"""The i-quants: codebook formats (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) and the
non-linear 4-bit IQ4_NL and IQ4_XS.

A codebook weight is scale * (grid row element, with a sign or a +-delta). The grid rows are expanded
once into tables that already carry every sign pattern (or delta), so that each group of 4 or 8 weights
is one row lookup and one multiply by its float32 scale. Sign flips and the +-1/8 deltas are exact, so
the reference's (scale * grid) * sign equals scale * (grid * sign) bit for bit.

The signed tables are built on first use: IQ2_XXS 1 MiB, IQ2_XS 2 MiB, IQ2_S 8 MiB (its sign byte is not
folded into 7 bits), the IQ3 and IQ1 tables 64-128 KiB.
"""

from __future__ import annotations

import functools

import torch

from tfb.quant.common import f16, field, look_up, nibble_lookup, nibble_tables, register_kernel, scale_planes
from tfb.quant.grids import grid

KVALUES_IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
IQ1_DELTA = 0.125


def _with_signs(rows: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """[G, W] rows -> [P * G, W]: row s * G + g is rows[g] negated where bit j of patterns[s] is set."""
    bits = (patterns.unsqueeze(1) >> torch.arange(rows.shape[1])) & 1
    signs = 1.0 - 2.0 * bits.float()
    return (signs.unsqueeze(1) * rows.unsqueeze(0)).reshape(-1, rows.shape[1])


@functools.cache
def _ksigns() -> torch.Tensor:
    """ksigns_iq2xs: a 7-bit sign index gains an eighth bit that makes the number of minus signs even."""
    low = torch.arange(128)
    parity = torch.zeros_like(low)
    for bit in range(7):
        parity ^= (low >> bit) & 1
    return low | (parity << 7)


@functools.cache
def _signed_grid(name: str, patterns: int) -> torch.Tensor:
    """Grid `name` with sign patterns 0..patterns-1 (through ksigns for the 128-pattern grids)."""
    signs = _ksigns() if patterns == 128 else torch.arange(patterns)
    return _with_signs(grid(name), signs)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for an integer index tensor of any shape: [*index.shape, row width]."""
    return torch.index_select(table, 0, index.reshape(-1)).view(*index.shape, table.shape[1])


def _scaled_rows(rows: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """out = scale * rows, one float32 scale [m, s] per s equal runs of each block's weights."""
    m, sub = scale.shape
    torch.mul(rows.reshape(m, sub, -1), scale.unsqueeze(-1), out=out.view(m, sub, -1))


def _shifted(x: torch.Tensor, shifts: range, mask: int) -> torch.Tensor:
    """(x >> s) & mask for each s, stacked on a new last axis (scalar shifts: torch's tensor shifts are slow)."""
    return torch.stack([(x >> s) & mask for s in shifts], dim=-1)


def _u16(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Little-endian uint16 fields as non-negative int32."""
    return field(blocks, start, stop, torch.int16).int() & 0xFFFF


@register_kernel("IQ2_XXS", 256)
def _iq2_xxs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, then per 32 weights two uint32: four grid indices (bytes), then four 7-bit sign indices + 4-bit scale
    m = blocks.shape[0]
    words = field(blocks, 2, 66, torch.int32).view(m, 8, 2)
    signs_scale = words[:, :, 1]
    scale = f16(blocks, 0) * (((signs_scale >> 28) & 0x0F).float() + 0.5) * 0.25
    grid_index = field(blocks, 2, 66).view(m, 8, 8)[:, :, :4].int()
    sign_index = _shifted(signs_scale, range(0, 28, 7), 0x7F)
    _scaled_rows(_rows(_signed_grid("iq2xxs", 128), sign_index * 256 + grid_index), scale, out)


def _iq2_scales(packed: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """IQ2_XS/IQ2_S: one 4-bit scale per 16 weights (low nibble first) -> d * (0.5 + s) * 0.25."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(packed.shape[0], -1)
    return d * (nibbles.float() + 0.5) * 0.25


@register_kernel("IQ2_XS", 256)
def _iq2_xs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[32] uint16 (9-bit grid index, 7-bit sign index), scales[8]
    index = _u16(blocks, 2, 66)  # = sign index * 512 + grid index: the signed table's row order
    scale = _iq2_scales(field(blocks, 66, 74), f16(blocks, 0))
    _scaled_rows(_rows(_signed_grid("iq2xs", 128), index), scale, out)


@register_kernel("IQ2_S", 256)
def _iq2_s(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[32] (grid index low bits), signs[32], qh[8] (grid index bits 8-9, 2 per group), scales[8]
    m = blocks.shape[0]
    high = _shifted(field(blocks, 66, 74), range(0, 8, 2), 0x03).view(m, 32).int()
    grid_index = field(blocks, 2, 34).int() | (high << 8)
    signs = field(blocks, 34, 66).int()
    scale = _iq2_scales(field(blocks, 74, 82), f16(blocks, 0))
    _scaled_rows(_rows(_signed_grid("iq2s", 256), signs * 1024 + grid_index), scale, out)


@register_kernel("IQ3_XXS", 256)
def _iq3_xxs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[64] (grid indices, 4 weights each), then per 32 weights a uint32: 4 x 7-bit signs + 4-bit scale
    m = blocks.shape[0]
    signs_scale = field(blocks, 66, 98, torch.int32)
    scale = f16(blocks, 0) * (((signs_scale >> 28) & 0x0F).float() + 0.5) * 0.5
    signs = look_up(_ksigns(), _shifted(signs_scale, range(0, 28, 7), 0x7F))  # [m, 8, 4]: 8 weights each
    sign_nibbles = torch.stack([signs & 0x0F, signs >> 4], dim=-1)  # one per grid row of 4
    grid_index = field(blocks, 2, 66).view(m, 8, 4, 2).int()
    _scaled_rows(_rows(_signed_grid("iq3xxs", 16), sign_nibbles * 256 + grid_index), scale, out)


@register_kernel("IQ3_S", 256)
def _iq3_s(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[64] (grid index low bits), qh[8] (bit 8, one per qs), signs[32], scales[4] (one nibble per 32)
    m = blocks.shape[0]
    high = _shifted(field(blocks, 66, 74), range(8), 0x01).view(m, 64).int()
    grid_index = field(blocks, 2, 66).int() | (high << 8)
    signs = field(blocks, 74, 106)
    sign_nibbles = torch.stack([signs & 0x0F, signs >> 4], dim=-1).view(m, 64).int()
    packed = field(blocks, 106, 110)
    scales = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(m, 8)
    scale = f16(blocks, 0) * (1 + 2 * scales)
    _scaled_rows(_rows(_signed_grid("iq3s", 16), sign_nibbles * 512 + grid_index), scale, out)


@functools.cache
def _iq1_table() -> torch.Tensor:
    """Row 2g + n: iq1s_grid row g plus delta, where n = 1 means delta = -1/8 (computed in float32)."""
    rows = grid("iq1s")
    return torch.stack([rows + IQ1_DELTA, rows - IQ1_DELTA], dim=1).reshape(-1, rows.shape[1])


@register_kernel("IQ1_S", 256)
def _iq1_s(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[32] (grid index low bits), qh[8] uint16: 4 x 3 high index bits, 3-bit scale, delta sign
    m = blocks.shape[0]
    qh = _u16(blocks, 34, 50)
    scale = f16(blocks, 0) * (2 * ((qh >> 12) & 0x07) + 1)
    grid_index = field(blocks, 2, 34).view(m, 8, 4).int() | (_shifted(qh, range(0, 12, 3), 0x07) << 8)
    row = grid_index * 2 + (qh >> 15).unsqueeze(-1)
    _scaled_rows(_rows(_iq1_table(), row), scale, out)


@register_kernel("IQ1_M", 256)
def _iq1_m(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # qs[32], qh[16] (a nibble per grid row: 3 high index bits, delta sign), scales[4] uint16: twelve
    # 3-bit scales plus, in their top nibbles, the float16 d
    m = blocks.shape[0]
    packed = _u16(blocks, 48, 56)
    d_bits = packed[:, 0] >> 12
    for k in range(1, 4):
        d_bits = d_bits | ((packed[:, k] >> 12) << (4 * k))
    d_int16 = d_bits - ((d_bits >> 15) << 16)  # reinterpret as signed before the float16 view
    d = d_int16.to(torch.int16).view(torch.float16).float().unsqueeze(1)
    scale = d * (2 * _shifted(packed, range(0, 12, 3), 0x07).view(m, 16) + 1)
    qh = field(blocks, 32, 48)
    row_bits = torch.stack([qh & 0x0F, qh >> 4], dim=-1).view(m, 32).int()
    row = (field(blocks, 0, 32).int() | ((row_bits & 0x07) << 8)) * 2 + (row_bits >> 3)
    _scaled_rows(_rows(_iq1_table(), row), scale, out)


@functools.cache
def _iq4_tables() -> torch.Tensor:
    return nibble_tables(KVALUES_IQ4NL)


@register_kernel("IQ4_NL", 32)
def _iq4_nl(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, qs[16]: weights 0-15 are the low nibbles, 16-31 the high ones, through the kvalues table
    values = nibble_lookup(field(blocks, 2, 18), _iq4_tables())
    scale_planes(values, f16(blocks, 0).unsqueeze(-1), out.view(-1, 2, 16))


@register_kernel("IQ4_XS", 256)
def _iq4_xs(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, scales_h (uint16: 2 high bits per 32 weights), scales_l[4] (nibbles), qs[128] (16 per 32 weights)
    m = blocks.shape[0]
    low = field(blocks, 4, 8)
    low = torch.stack([low & 0x0F, low >> 4], dim=-1).view(m, 8).int()
    high = _shifted(_u16(blocks, 2, 4).view(m), range(0, 16, 2), 0x03)
    scale = f16(blocks, 0) * ((low | (high << 4)) - 32)
    values = nibble_lookup(field(blocks, 8, 136).view(m, 8, 16), _iq4_tables())
    scale_planes(values, scale.view(m, 8, 1, 1), out.view(m, 8, 2, 16), dim=2)
