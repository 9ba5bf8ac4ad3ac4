"""Native kernels: for packed weights a fused matmul that expands ggml blocks in registers and a fast
bit-exact dequantizer; a decoding step's attention and RMS norm; and a whole planned decoding step (step.c).
In C, compiled on first use (see library.py; TFB_NATIVE=0 turns them off).

Each entry point returns None (or False) where the native path cannot serve a call, so that callers
keep the torch path: no compiler, a failed build, or a storage type without native kernels.
"""

from tfb.quant.native.ops import (
    NATIVE_MAX_ROWS,
    Prepared,
    PreparedExperts,
    attend,
    available,
    dequantize_into,
    int8_rows,
    isa,
    matmul,
    prepare,
    prepare_experts,
    rms_norm,
    rope,
    run_step,
    set_isa,
    set_threads,
    supports,
    supports_int8,
    threads,
    use_openmp,
    uses_openmp,
)

__all__ = ["NATIVE_MAX_ROWS", "Prepared", "PreparedExperts", "attend", "available", "dequantize_into", "int8_rows",
           "isa", "matmul", "prepare", "prepare_experts", "rms_norm", "rope", "run_step", "set_isa", "set_threads",
           "supports", "supports_int8", "threads", "use_openmp", "uses_openmp"]
