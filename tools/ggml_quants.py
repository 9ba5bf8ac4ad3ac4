"""llama.cpp's own block quantizers and dequantizers (ggml-quants.c from the pinned llama-cpp-python sdist),
compiled with the system C compiler into a small library, for tests that compare tfb with ggml itself.

    python tools/ggml_quants.py          # builds (once) and prints the library's path

Only ggml-quants.c is compiled: the few ggml functions it calls outside dequantizing (error reporting and
type sizes, used by validation and the importance-matrix quantizers) are stubs that abort, so a call that
would need them fails loudly instead of giving numbers. The library is cached next to the sources.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from llama_cpp import ggml_quants_dir

STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort called from %s:%d\n", file, line);
    abort();
}
static void unused(const char *what) { fprintf(stderr, "stub %s called\n", what); abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type, (void)ne; unused("ggml_row_size"); return 0; }
const char *ggml_type_name(enum ggml_type type) { (void)type; unused("ggml_type_name"); return 0; }
size_t ggml_type_size(enum ggml_type type) { (void)type; unused("ggml_type_size"); return 0; }
"""

# ggml's reference quantizers that need no lookup tables initialised first (the IQ1/IQ2/IQ3 ones do)
QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
               "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]


def library_path() -> Path:
    """The compiled library, built on first use (needs `cc`, or the compiler in $CC)."""
    root = ggml_quants_dir()
    out = root / "libggml-quants.so"
    if out.is_file():
        return out
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) to build ggml-quants.c")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        stubs = Path(tmp, "stubs.c")
        stubs.write_text(STUBS)
        built = Path(tmp, out.name)
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-std=gnu11", "-w", f"-I{root / 'ggml' / 'include'}",
                        f"-I{root / 'ggml' / 'src'}", str(root / "ggml" / "src" / "ggml-quants.c"), str(stubs),
                        "-o", str(built), "-lm"], check=True, capture_output=True)
        built.replace(out)
    return out


def _function_name(action: str, name: str) -> str:
    """ggml's spelling: dequantize_row_q4_K, quantize_row_iq4_nl_ref."""
    lower = name.lower().replace("_k", "_K")
    return f"dequantize_row_{lower}" if action == "dequantize" else f"quantize_row_{lower}_ref"


class GGMLQuants:
    """ctypes access to `dequantize_row_*` and `quantize_row_*_ref` for the block formats."""

    def __init__(self, path: Path | None = None) -> None:
        self.lib = ctypes.CDLL(str(path or library_path()))

    def dequantize(self, name: str, raw: np.ndarray, block_size: int) -> np.ndarray:
        """[n, type_size] uint8 blocks -> float32 [n, block_size], by ggml."""
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.empty((raw.shape[0], block_size), dtype=np.float32)
        fn = getattr(self.lib, _function_name("dequantize", name))
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        fn(raw.ctypes.data, out.ctypes.data, out.size)
        return out

    def quantize(self, name: str, values: np.ndarray, type_size: int, block_size: int) -> np.ndarray:
        """float32 values (a multiple of block_size) -> [n, type_size] uint8 blocks, by ggml's reference."""
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        out = np.zeros((values.size // block_size, type_size), dtype=np.uint8)
        fn = getattr(self.lib, _function_name("quantize", name))
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        fn(values.ctypes.data, out.ctypes.data, values.size)
        return out


if __name__ == "__main__":
    print(library_path())
