"""Dequantization throughput: tfb against the `gguf` package's numpy reference (`gguf.quants.dequantize`).

    python tools/bench_dequant.py                      # every type, 4096 x 4096 weights
    python tools/bench_dequant.py --types Q4_0 IQ2_S --rows 1024 --repeats 5

Every side dequantizes the same random blocks (float16 scales kept finite), best of --repeats calls, in
one process; a call's time ends when its result is ready (freeing it is not timed, on either side).
Columns:
- tfb, new tensor: `PackedTensor.dequantize()`, what tfb's API and loader call (the native kernels, or
  the torch dequantizers where the native library is unavailable); the reference allocates its result too;
- tfb, into a buffer: `PackedTensor.dequantize_into(out)` with `out` allocated once (by tfb's allocator for
  large results: huge pages, as numpy's), the way llama.cpp's test-quantize-perf times its `to_float` (so
  without the OS's cost of zeroing fresh pages);
- torch only: tfb's torch dequantizers, the definition the native kernels are tested against and the
  path without a C compiler, into a new tensor and into a buffer;
- where llama-cpp-python is installed, a second table: llama.cpp's own dequantizers (ggml's `to_float`,
  called in the libggml it ships) into a buffer, and whether tfb gives the same float32 bits.
The reference is single-threaded numpy; `--threads 1 --clock cpu` compares one core against one core by
CPU time, which stays meaningful when other processes share the machine (wall-clock figures with two
threads do not: every parallel torch call then waits for the busy core). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

import tfb.quant.native as native
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.quant import PackedTensor
from tfb.quant.blocks import DEQUANTIZERS, KERNELS, dequantize_into
from tfb.quant.common import empty_float32

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
         "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]

# byte offsets of each format's float16 fields (ggml-common.h), made finite below
F16_FIELDS = {"F16": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ1_S": [0], "IQ2_XXS": [0],
              "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ4_NL": [0], "IQ4_XS": [0],
              "TQ1_0": [52], "TQ2_0": [64], "Q1_0": [0], "Q2_0": [0]}
EXPONENT_TOP_BITS = {"BF16": [(1, 0x40)], "IQ1_M": [(49, 0x40), (55, 0x40)]}  # (byte, bit to clear)


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of `name` whose float scales are finite (the top exponent bit cleared)."""
    raw = rng.integers(0, 256, size=(n_blocks, GGML_TYPE_BY_NAME[name].type_size), dtype=np.uint8)
    for offset in F16_FIELDS.get(name, []):
        raw[:, offset + 1] &= 0xBF
    for offset, bit in EXPONENT_TOP_BITS.get(name, []):
        raw[:, offset] &= 0xFF ^ bit
    return raw


CLOCK = time.perf_counter


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up: lazy tables, allocator
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        result = fn()
        best = min(best, CLOCK() - start)
        del result
    return best


def reference(name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    from gguf import quants
    from gguf.constants import GGMLQuantizationType

    qtype = getattr(GGMLQuantizationType, name, None)
    if qtype is None:
        return None

    def run(raw: np.ndarray) -> np.ndarray:
        return quants.dequantize(raw, qtype)

    try:
        run(np.zeros((1, GGML_TYPE_BY_NAME[name].type_size), dtype=np.uint8))
    except NotImplementedError:
        return None
    return run


@functools.cache
def _libggml() -> ctypes.CDLL | None:
    """The libggml-base that llama-cpp-python ships, or None where it is not installed."""
    try:  # by its distribution: tools/llama_cpp.py shadows the package on this script's path
        lib_dir = Path(str(metadata.distribution("llama_cpp_python").locate_file("llama_cpp/lib")))
    except metadata.PackageNotFoundError:
        return None
    library = next(iter(sorted(lib_dir.glob("libggml-base.so*"))), None)
    if library is None:
        return None
    ggml = ctypes.CDLL(str(library))
    ggml.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    ggml.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return ggml


class TypeTraits(ctypes.Structure):  # struct ggml_type_traits, ggml.h
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


def llama_cpp_to_float(name: str) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """llama.cpp's own dequantizer of `name` (ggml's `to_float`, one thread, into a buffer), from the libggml
    that llama-cpp-python ships; None where it is not installed or has no such type."""
    ggml = _libggml()
    if ggml is None:
        return None
    gtype = GGML_TYPE_BY_NAME[name]
    traits = ggml.ggml_get_type_traits(gtype.id).contents
    found = (traits.type_name or b"").decode("ascii", "replace").lower()
    if not traits.to_float or found != name.lower() or traits.type_size != gtype.type_size:
        return None
    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(traits.to_float)

    def run(raw: np.ndarray, out: np.ndarray) -> None:
        to_float(raw.ctypes.data, out.ctypes.data, out.size)

    return run


def packed(name: str, raw: np.ndarray, rows: int) -> PackedTensor:
    """The blocks as a [rows, cols] weight."""
    gtype = GGML_TYPE_BY_NAME[name]
    return PackedTensor(torch.from_numpy(raw), gtype, (rows, raw.size // gtype.type_size * gtype.block_size // rows))


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "unknown"


def measure(name: str, raw: np.ndarray, rows: int, repeats: int) -> list[float | None]:
    """Seconds per call: the reference (None where it has no dequantizer), tfb into a new tensor and into a
    buffer, the torch dequantizers alone into a new tensor and into a buffer, llama.cpp's into a buffer."""
    weight = packed(name, raw, rows)
    blocks = weight.raw.view(-1, weight.ggml_type.type_size)
    out = empty_float32(*weight.shape)  # on huge pages, as numpy's large arrays (4 KiB pages cost a third)
    block_size, kernel = KERNELS[name]
    ref = reference(name)
    data = raw.reshape(rows, -1)
    ggml = llama_cpp_to_float(name)
    ggml_out = np.empty(out.numel(), dtype=np.float32)
    return [None if ref is None else best_seconds(lambda: ref(data), repeats),
            best_seconds(weight.dequantize, repeats),
            best_seconds(lambda: weight.dequantize_into(out), repeats),
            best_seconds(lambda: DEQUANTIZERS[name](blocks), repeats),
            best_seconds(lambda: dequantize_into(blocks, out.view(-1, block_size), kernel, block_size), repeats),
            None if ggml is None else best_seconds(lambda: ggml(raw, ggml_out), repeats)]


def same_bits_as_llama_cpp(name: str, raw: np.ndarray, rows: int) -> str:
    """Whether tfb's dequantizer gives llama.cpp's float32 bits for these blocks."""
    ggml = llama_cpp_to_float(name)
    if ggml is None:
        return "n/a"
    weight = packed(name, raw, rows)
    theirs = np.empty(weight.shape, dtype=np.float32)
    ggml(raw, theirs)
    return "yes" if np.array_equal(weight.dequantize().numpy().view(np.uint32), theirs.view(np.uint32)) else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="*", default=TYPES)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5, help="calls timed per measurement (the best counts)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every type this many times, spread over the run, and keep the best")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this thread's CPU time (with --threads 1), robust when other processes "
                             "compete for the cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            parser.error("--clock cpu measures one thread: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    warnings.simplefilter("ignore")  # the reference warns on overflow to inf in extreme random blocks

    rng = np.random.default_rng(0)
    weights = args.rows * args.cols
    data = {name: random_blocks(name, weights // GGML_TYPE_BY_NAME[name].block_size, rng) for name in args.types}
    best: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, raw in data.items():
            times = [float("inf") if t is None else t for t in measure(name, raw, args.rows, args.repeats)]
            best[name] = [min(t) for t in zip(best.get(name, times), times, strict=True)]
    native_where = f"native kernels: {native.isa()}" if native.available() else "native kernels unavailable"

    print(f"{weights / 1e6:.1f} M weights ({args.rows} x {args.cols}) per call, best of {args.repeats} calls "
          f"x {args.rounds} rounds; {args.clock} clock; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {cpu_model()}, {native_where}, load average {load_average()}\n")
    print("| type | gguf numpy (Mw/s) | tfb, new tensor (Mw/s) | tfb / gguf | tfb, into a buffer (Mw/s) "
          "| that / gguf | torch only, new tensor (Mw/s) | that / gguf | torch only, into a buffer (Mw/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def mws(seconds: float) -> str:
        return f"{weights / seconds / 1e6:.0f}" if seconds < float("inf") else "n/a"

    def ratio(slow: float, fast: float) -> str:
        return f"{slow / fast:.1f}x" if slow < float("inf") and fast < float("inf") else "n/a"

    for name, (theirs, fresh, into, torch_fresh, torch_into, _) in best.items():
        print(f"| {name} | {mws(theirs)} | {mws(fresh)} | {ratio(theirs, fresh)} | {mws(into)} "
              f"| {ratio(theirs, into)} | {mws(torch_fresh)} | {ratio(theirs, torch_fresh)} | {mws(torch_into)} |")
    if all(times[5] == float("inf") for times in best.values()):
        return
    print("\nAgainst llama.cpp's own dequantizers (ggml's `to_float`, one thread, into a buffer; the libggml of "
          "llama-cpp-python):\n")
    print("| type | llama.cpp (Mw/s) | tfb, into a buffer (Mw/s) | tfb / llama.cpp | same float32 bits as llama.cpp |")
    print("|---|---:|---:|---:|---|")
    for name, times in best.items():
        print(f"| {name} | {mws(times[5])} | {mws(times[2])} | {ratio(times[5], times[2])} "
              f"| {same_bits_as_llama_cpp(name, data[name], args.rows)} |")


if __name__ == "__main__":
    main()
