"""Block dequantizers: raw ggml blocks -> float32, vectorised over blocks in torch.

Each dequantizer takes a uint8 tensor of shape [n_blocks, type_size] and returns float32 values of
shape [n_blocks, block_size]. The layouts are those of ggml-common.h; every one is checked bit-exact
against the `gguf` package's reference dequantizer in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Dequantizer = Callable[[torch.Tensor], torch.Tensor]
DEQUANTIZERS: dict[str, Dequantizer] = {}


def register(name: str) -> Callable[[Dequantizer], Dequantizer]:
    def wrap(fn: Dequantizer) -> Dequantizer:
        DEQUANTIZERS[name] = fn
        return fn

    return wrap


def f16(blocks: torch.Tensor, start: int = 0) -> torch.Tensor:
    """The little-endian float16 at byte `start` of each block, as float32 [n_blocks, 1]."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


@register("F32")
def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


@register("F16")
def _f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


@register("BF16")
def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


@register("Q8_0")
def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = f16(blocks)
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return d * q


def low_high_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k] values: the k low nibbles, then the k high nibbles (ggml's order)."""
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)


@register("Q4_0")
def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = f16(blocks)
    q = low_high_nibbles(blocks[:, 2:]).float() - 8.0
    return d * q
