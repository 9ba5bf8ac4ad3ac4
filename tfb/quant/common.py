"""The dequantizer registry and the pieces every block format shares.

A format is written as a *kernel*: it reads a slice of blocks (uint8 [m, type_size]) and writes their
float32 values into a preallocated [m, block_size] slice. The registry wraps each kernel into a
dequantizer that allocates the whole output once and runs the kernel over slices of about
CHUNK_WEIGHTS weights, so that the kernel's temporaries stay in cache and are recycled by the
allocator instead of being page-faulted in at full tensor size.

Bit-exactness: every value is produced by the same float32 operations, in the same order, as the `gguf`
package's reference (a scale computed as the reference computes it, times an exact small integer or
table value, minus an offset where the format has one). Each product is one IEEE multiply, so the
results are identical; no step may be fused (no addcmul/FMA) or done in another precision.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
from collections.abc import Callable

import torch

Dequantizer = Callable[[torch.Tensor], torch.Tensor]
Kernel = Callable[[torch.Tensor, torch.Tensor], None]

DEQUANTIZERS: dict[str, Dequantizer] = {}
KERNELS: dict[str, tuple[int, Kernel]] = {}  # name -> (block_size, kernel)

CHUNK_WEIGHTS = 1 << 19  # weights per kernel call (2 MiB of output): each torch call costs microseconds

# Outputs at least this large are mapped with transparent huge pages: faulting in a fresh 64 MiB tensor
# 4 KiB at a time costs more than dequantizing into it (numpy does the same for its arrays).
HUGE_PAGE = 2 << 20
HUGE_OUTPUT_BYTES = 8 << 20


def register(name: str) -> Callable[[Dequantizer], Dequantizer]:
    """Register a whole-tensor dequantizer under a ggml type name."""

    def wrap(fn: Dequantizer) -> Dequantizer:
        DEQUANTIZERS[name] = fn
        return fn

    return wrap


def register_kernel(name: str, block_size: int) -> Callable[[Kernel], Kernel]:
    """Register a slice kernel under a ggml type name, with the chunked dequantizer built on it."""

    def wrap(kernel: Kernel) -> Kernel:
        KERNELS[name] = (block_size, kernel)
        DEQUANTIZERS[name] = _chunked(block_size, kernel)
        return kernel

    return wrap


def _chunked(block_size: int, kernel: Kernel) -> Dequantizer:
    def dequantize(blocks: torch.Tensor) -> torch.Tensor:
        out = empty_float32(blocks.shape[0], block_size)
        dequantize_into(blocks, out, kernel, block_size)
        return out

    return dequantize


def dequantize_into(blocks: torch.Tensor, out: torch.Tensor, kernel: Kernel, block_size: int) -> None:
    """Run `kernel` over slices of `blocks`, writing into the contiguous float32 `out` [n, block_size]."""
    # A loop over slices of thousands of blocks, not over blocks: each kernel call is vectorised.
    step = max(1, CHUNK_WEIGHTS // block_size)
    for start in range(0, blocks.shape[0], step):
        kernel(blocks[start:start + step], out[start:start + step])


def empty_float32(rows: int, cols: int) -> torch.Tensor:
    """An uninitialised float32 [rows, cols] tensor; large ones backed by huge pages where the OS has them."""
    nbytes = rows * cols * 4
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if nbytes < HUGE_OUTPUT_BYTES or advice is None or not flags:
        return torch.empty(rows, cols)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=flags)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: ordinary pages then
        region.madvise(advice)
    flat = torch.frombuffer(region, dtype=torch.float32)  # keeps `region` alive as long as the tensor
    skip = (-flat.data_ptr() % HUGE_PAGE) // 4  # start on a huge-page boundary
    return flat[skip:skip + rows * cols].view(rows, cols)


def field(blocks: torch.Tensor, start: int, stop: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Bytes [start, stop) of each block as an [m, k] tensor of `dtype` (little-endian).

    A strided view of the blocks when the offsets allow one (no copy), else a contiguous copy.
    """
    itemsize = dtype.itemsize
    if start % itemsize == 0 and stop % itemsize == 0:
        try:
            return blocks.view(dtype)[:, start // itemsize:stop // itemsize]
        except RuntimeError:  # block size or slice offset not a multiple of the item size
            pass
    return blocks[:, start:stop].clone(memory_format=torch.contiguous_format).view(dtype)


def f16(blocks: torch.Tensor, start: int = 0) -> torch.Tensor:
    """The float16 at byte `start` of each block as float32 [m, 1], converted as numpy's float16 does."""
    return field(blocks, start, start + 2, torch.float16).float()


LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F


def lanes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., k] (k a multiple of 8) as int64 [..., k / 8], copied if not contiguous and 8-aligned."""
    if packed.is_contiguous() and packed.storage_offset() % 8 == 0:
        try:
            return packed.view(torch.int64)
        except RuntimeError:  # a single block keeps its row stride, which view() checks
            pass
    return packed.clone(memory_format=torch.contiguous_format).view(torch.int64)


def nibbles(packed: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """uint8 [..., k] (k a multiple of 8) -> the low and the high nibbles, stacked at `dim`.

    With dim=0 ([2, ..., k]) each half is one contiguous tensor, for formats whose weights are the low
    then the high nibbles of one run of bytes; dim=-2 interleaves the halves run by run ([..., 2, k]).
    """
    return bit_planes(packed, 4, 2, dim)


@functools.cache
def _shifts(bits: int, count: int) -> torch.Tensor:
    return torch.arange(0, bits * count, bits, dtype=torch.int64).view(count, 1)


def bit_planes(packed: torch.Tensor, bits: int, count: int, dim: int = 0) -> torch.Tensor:
    """uint8 [..., k] (k a multiple of 8) -> `count` planes stacked at `dim` (0 or -2): plane i holds
    (byte >> bits*i) & (2**bits - 1) for every byte.

    Works on eight bytes at a time as int64 lanes; the mask removes what the shift carries across bytes.
    (Every torch call costs microseconds, and runs of a few elements cost as much: few calls, long runs.)
    """
    words = lanes(packed)
    mask = int.from_bytes(bytes([(1 << bits) - 1] * 8), "little")
    if dim == 0:  # one broadcast shift, with contiguous runs as long as the input
        planes = words.unsqueeze(0) >> _shifts(bits, count).view(count, *([1] * words.dim()))
    else:  # a broadcast shift would run over a few lanes at a time: shift plane by plane, then stack
        planes = torch.stack([words >> (bits * i) for i in range(count)], dim=dim)
    return planes.bitwise_and_(mask).view(torch.uint8)


def scale_planes(planes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, dim: int = 1) -> None:
    """out.select(dim, p) = planes[p] * scale.select(dim, p) for each plane p (one float32 multiply each).

    planes [P, ...] are integers; `scale` broadcasts against `out` and has size P or 1 along `dim`.
    One multiply per plane keeps every operand a plain strided tensor; a single multiply over a
    permuted view of the planes is several times slower in torch.
    """
    for p in range(planes.shape[0]):
        torch.mul(planes[p], scale.select(dim, p if scale.shape[dim] > 1 else 0), out=out.select(dim, p))


def byte_table(values: Callable[[int], list[int]], dtype: torch.dtype) -> torch.Tensor:
    """A [256] table mapping a byte to the little-endian packing of `values(byte)` (int8 each) as `dtype`.

    E.g. with dtype int64, `values` gives 8 int8s per byte; looking bytes up in it expands them 8-fold.
    """
    packed = bytearray()
    for byte in range(256):
        packed += bytes(v & 0xFF for v in values(byte))
    return torch.frombuffer(packed, dtype=torch.uint8).view(dtype).clone()


def look_up(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """table[indices] for a 1-D table and integer indices of any shape, contiguous in the indices' shape.

    index_select on a 1-D table is the fastest gather torch has on CPU (several times torch.take).
    """
    return torch.index_select(table, 0, indices.int().reshape(-1)).view(indices.shape)


def nibble_tables(values: list[int]) -> torch.Tensor:
    """float32 [2, 256]: row 0 maps a byte to values[low nibble], row 1 to values[high nibble]."""
    table = torch.tensor(values, dtype=torch.float32)
    byte = torch.arange(256)
    return torch.stack([table[byte & 0x0F], table[byte >> 4]])


def nibble_lookup(packed: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """uint8 [m, ..., k] -> float32 [2, m, ..., k]: the table values of the low, then the high nibbles.

    A byte-indexed lookup per plane; a 1-D index_select is the fastest gather torch has on CPU.
    """
    index = packed.int().reshape(-1)
    planes = torch.empty((2, *packed.shape), dtype=torch.float32)
    for p in range(2):
        torch.index_select(tables[p], 0, index, out=planes[p].view(-1))
    return planes
