"""ggml storage types: block dequantizers and weights kept packed in memory."""

from tfb.quant.packed import PackedTensor, is_supported

__all__ = ["PackedTensor", "is_supported"]
