"""Dequantization throughput: tfb against the `gguf` package's numpy reference (`gguf.quants.dequantize`).

    python tools/bench_dequant.py                      # every type, 4096 x 4096 weights
    python tools/bench_dequant.py --types Q4_0 IQ2_S --rows 1024 --repeats 5

Every side dequantizes the same random blocks (float16 scales kept finite), best of --repeats calls, in
one process; a call's time ends when its result is ready (freeing it is not timed, on either side).
Columns:
- tfb, new tensor: `PackedTensor.dequantize()`, what tfb's API and loader call (the native kernels, or
  the torch dequantizers where the native library is unavailable); the reference allocates its result too;
- tfb, into a buffer: `PackedTensor.dequantize_into(out)` with `out` allocated once, the way llama.cpp's
  test-quantize-perf times its `to_float` (so without the OS's cost of zeroing fresh pages);
- torch only: tfb's torch dequantizers, the definition the native kernels are tested against and the
  path without a C compiler, into a new tensor and into a buffer.
The reference is single-threaded numpy; `--threads 1 --clock cpu` compares one core against one core by
CPU time, which stays meaningful when other processes share the machine (wall-clock figures with two
threads do not: every parallel torch call then waits for the busy core). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import tfb.quant.native as native
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.quant import PackedTensor
from tfb.quant.blocks import DEQUANTIZERS, KERNELS, dequantize_into

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
    buffer, then the torch dequantizers alone into a new tensor and into a buffer."""
    gtype = GGML_TYPE_BY_NAME[name]
    blocks = torch.from_numpy(raw)
    weight = PackedTensor(blocks, gtype, (rows, blocks.numel() // gtype.type_size * gtype.block_size // rows))
    out = torch.empty(weight.shape)
    block_size, kernel = KERNELS[name]
    ref = reference(name)
    data = raw.reshape(rows, -1)
    return [None if ref is None else best_seconds(lambda: ref(data), repeats),
            best_seconds(weight.dequantize, repeats),
            best_seconds(lambda: weight.dequantize_into(out), repeats),
            best_seconds(lambda: DEQUANTIZERS[name](blocks), repeats),
            best_seconds(lambda: dequantize_into(blocks, out.view(-1, block_size), kernel, block_size), repeats)]


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

    for name, (theirs, fresh, into, torch_fresh, torch_into) in best.items():
        print(f"| {name} | {mws(theirs)} | {mws(fresh)} | {ratio(theirs, fresh)} | {mws(into)} "
              f"| {ratio(theirs, into)} | {mws(torch_fresh)} | {ratio(theirs, torch_fresh)} | {mws(torch_into)} |")


if __name__ == "__main__":
    main()
