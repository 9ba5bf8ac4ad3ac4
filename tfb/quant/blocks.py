"""Block dequantizers: raw ggml blocks -> float32, vectorised over blocks in torch.

Each dequantizer takes a uint8 tensor of shape [n_blocks, type_size] and returns float32 values of
shape [n_blocks, block_size]. The layouts are those of ggml-common.h; every one is checked bit-exact
against the `gguf` package's reference dequantizer in the tests (Q1_0 and Q2_0, newer than that package,
against a transcription of ggml-quants.c).

The formats live in one module per family; importing them here fills the registry.
"""

from __future__ import annotations

from tfb.quant import floats, fp4, iquants, kquants, legacy, ternary
from tfb.quant.common import DEQUANTIZERS, KERNELS, Dequantizer, Kernel, dequantize_into, f16, register

__all__ = ["DEQUANTIZERS", "KERNELS", "Dequantizer", "Kernel", "dequantize_into", "f16", "register"]

FAMILIES = (floats, legacy, kquants, iquants, fp4, ternary)
