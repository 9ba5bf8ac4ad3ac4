"""Matmul throughput with packed weights: native kernels, the torch fallback, torch float32 dense.

    python tools/bench_matmul.py                          # every native type, 1 and 2 threads
    python tools/bench_matmul.py --types Q4_K Q6_K --threads 2 --repeats 20
    python tools/bench_matmul.py --decode model.gguf      # a model's decode speed and its matmuls' share
    python tools/bench_matmul.py --sweep Q4_K             # native vs torch GEMM by activation rows
    python tools/bench_matmul.py --sweep Q6_K --native-only --rows 1 2 4 8 16 --shape 151936 1024
    python tools/bench_matmul.py --make-model Q4_K_M q4km.gguf   # a 0.6B-shaped model file to --decode
    python tools/bench_matmul.py --sweep Q4_K --int8 --cpu-time --rows 1 4 8 16 64   # float vs 8-bit products

For each storage type and weight shape ([3072 x 1024], a feed-forward projection of a 1024-wide model,
and [151936 x 1024], a 151936-token output layer), one activation row (M = 1, decoding) is multiplied:
- native: tfb.quant.native (the fused kernel, on the threads it would use in a model),
- native int8: the same with the activations rounded to 8 bits (tfb.load(..., int8_activations=True)),
  for the types that have such products,
- torch fallback: what tfb does without the native library (torch dequantizers into a reused
  buffer, then torch's GEMM),
- fp32 dense: torch.nn.functional.linear on the same weights expanded to float32 beforehand (4 bytes
  a weight: the memory-bandwidth yardstick).
Throughput is in GB/s of the weight bytes as stored (the packed size, or 4 bytes a weight for fp32)
and in millions of weights per second (Mw/s). A second table times 128 activation rows (a prompt) on
the small shape. Each figure is the best of --repeats calls, and of --rounds rounds over all types
spread over the run (other processes may share the machine: best-of-N is the least disturbed run).
--cpu-time times by the process's CPU time instead of the wall clock (on a shared machine, the time others
take the core from this process does not count; memory stalls still do): use it with one thread.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_dequant import F16_FIELDS, cpu_model, load_average, random_blocks

import tfb.quant.native as native
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.nn import linear
from tfb.quant import PackedTensor

TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "MXFP4", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "TQ1_0",
         "TQ2_0", "NVFP4", "Q1_0", "Q2_0"]
SHAPES = [(3072, 1024), (151936, 1024)]
PROMPT_ROWS = 128


def moderate_blocks(name: str, rows: int, cols: int, rng: np.random.Generator) -> PackedTensor:
    """Random blocks whose scales are near 0.01 (no overflow, no subnormal products to slow anything)."""
    gtype = GGML_TYPE_BY_NAME[name]
    n_blocks = rows * cols // gtype.block_size
    if name in ("F16", "BF16"):
        values = torch.from_numpy(rng.standard_normal(n_blocks, dtype=np.float32))
        raw = values.to(torch.float16 if name == "F16" else torch.bfloat16).view(torch.uint8).numpy()
    else:
        raw = random_blocks(name, n_blocks, rng)
        scales = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        for offset in F16_FIELDS.get(name, []):
            raw[:, offset:offset + 2] = scales
        if name == "MXFP4":
            raw[:, 0] = rng.integers(118, 134, n_blocks)  # 2**-10 .. 2**5
    return PackedTensor(torch.from_numpy(np.ascontiguousarray(raw)).reshape(rows, -1), gtype, (rows, cols))


CLOCK = [time.perf_counter]  # --cpu-time: time.process_time


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm up: caches, lazily built tables, the library's threads
    best, clock = float("inf"), CLOCK[0]
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


@contextmanager
def threads(count: int):
    """torch and the native kernels both on `count` threads."""
    before = torch.get_num_threads(), native.threads()
    torch.set_num_threads(count)
    native.set_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        native.set_threads(before[1])


@contextmanager
def without_native():
    saved = native.matmul, native.prepare, native.dequantize_into
    native.matmul, native.prepare = (lambda *args: None), (lambda *args: None)
    native.dequantize_into = lambda w, out: False
    try:
        yield
    finally:
        native.matmul, native.prepare, native.dequantize_into = saved


def measure(name: str, weight: PackedTensor, rows: int, repeats: int, fallback: bool) -> dict[str, float]:
    """Seconds per product of `rows` activation rows: native, torch fallback (unless skipped)."""
    x = torch.randn(rows, weight.shape[1])
    times = {}
    prepared = native.prepare(weight)
    if prepared is not None:
        times["native"] = best_seconds(lambda: prepared(x), repeats)
    rounded = native.prepare(weight, int8_activations=True)
    if rounded is not None and rounded.int8_activations:
        times["int8"] = best_seconds(lambda: rounded(x), repeats)
    if fallback:
        with without_native():
            times["fallback"] = best_seconds(lambda: linear.packed_matmul(x, weight), max(1, repeats // 4))
    return times


def dense_seconds(shape: tuple[int, int], rows: int, repeats: int) -> float:
    weight = torch.randn(shape) * 0.01
    x = torch.randn(rows, shape[1])
    return best_seconds(lambda: F.linear(x, weight), repeats)


def rate(nbytes: float, weights: float, seconds: float | None) -> str:
    if seconds is None:
        return "n/a | n/a"
    return f"{nbytes / seconds / 1e9:.1f} | {weights / seconds / 1e6:.0f}"


def decode(path: str, tokens: int, runs: int) -> None:
    """Greedy decoding after a 32-token prompt, best of `runs`; then where a decode step's time goes."""
    import tfb
    from tfb.text.generate import Stats, generate_ids

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = tfb.load(path)
    seconds: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    product = native.Prepared.__call__

    def timed(self: native.Prepared, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        y = product(self, x)
        if x.shape[0] == 1:
            seconds[self.name.rsplit("(", 1)[-1].rstrip(")"), self.out_features, x.shape[1]].append(
                time.perf_counter() - start)
        return y

    prompt, best = list(range(100, 132)), Stats()
    for _ in range(runs):
        stats = Stats()
        list(generate_ids(model, prompt, max_tokens=tokens, stats=stats))
        if stats.generate_tokens_per_second > best.generate_tokens_per_second:
            best = stats
    native.Prepared.__call__ = timed  # type: ignore[method-assign]
    stats = Stats()
    list(generate_ids(model, prompt, max_tokens=tokens, stats=stats))
    native.Prepared.__call__ = product  # type: ignore[method-assign]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = os.path.getsize(path)
    print(f"{path}: torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads, native kernels: "
          f"{native.isa()} on {'torch OpenMP' if native.uses_openmp() else 'own pool'} threads, "
          f"load average {load_average()}")
    print(f"prompt {best.prompt_tokens} tokens at {best.prompt_tokens_per_second:.0f} tok/s; decode "
          f"{best.generated_tokens} tokens at {best.generate_tokens_per_second:.1f} tok/s (best of {runs}); peak RSS "
          f"{(peak - baseline) / 1024:.0f} MiB over the import baseline = {(peak - baseline) * 1024 / size:.2f}x "
          f"the file ({size / 2**20:.0f} MiB)\n")
    step = stats.generate_seconds / max(1, stats.generated_tokens)
    print(f"one decode step (a timed run): {step * 1e3:.1f} ms, of which one-row packed matmuls:\n")
    print("| type | shape | calls per step | us per call | ms per step | GB/s |")
    print("|---|---|---:|---:|---:|---:|")
    total = 0.0
    for (name, rows, cols), times in sorted(seconds.items(), key=lambda kv: -sum(kv[1])):
        calls = len(times) / stats.generated_tokens
        per_step = sum(times) / stats.generated_tokens
        total += per_step
        nbytes = GGML_TYPE_BY_NAME[name].row_bytes(cols) * rows
        print(f"| {name} | {rows} x {cols} | {calls:.0f} | {sum(times) / len(times) * 1e6:.0f} | {per_step * 1e3:.2f} "
              f"| {nbytes * len(times) / sum(times) / 1e9:.1f} |")
    print(f"| all | | | | {total * 1e3:.1f} | |")


def sweep(name: str, row_counts: list[int], repeats: int, shape: tuple[int, int] = SHAPES[0],
          native_only: bool = False, int8: bool = False) -> None:
    """Where the native multi-row kernel stops beating torch's GEMM on natively expanded weights; with
    native_only, the native product alone and its cost per activation row against one row's (how far a
    continuous-batching decode step of `rows` sequences costs less than `rows` single steps); with int8,
    the float32 product against the one with 8-bit activations, by rows."""
    weight = moderate_blocks(name, *shape, np.random.default_rng(0))
    prepared = native.prepare(weight)
    assert prepared is not None, f"{name} has no native kernels here"
    print(f"{name} W [{shape[0]} x {shape[1]}], {torch.get_num_threads()} threads, kernels {native.isa()}: "
          f"ms per product ({'CPU' if CLOCK[0] is time.process_time else 'wall'} time)\n")
    if int8:
        rounded = native.prepare(weight, int8_activations=True)
        assert rounded is not None and rounded.int8_activations, f"{name} has no 8-bit activation products here"
        print("| rows | float32 | int8 | float32 / int8 |")
        print("|---:|---:|---:|---:|")
        for rows in row_counts:
            x = torch.randn(rows, shape[1])
            count = max(2, repeats // max(1, rows // 64))
            exact = best_seconds(lambda x=x: prepared(x), count)
            fast = best_seconds(lambda x=x: rounded(x), count)
            print(f"| {rows} | {exact * 1e3:.3f} | {fast * 1e3:.3f} | {exact / fast:.2f} |")
        return
    if native_only:
        print("| rows | native | x one row's time |")
        print("|---:|---:|---:|")
    else:
        print("| rows | native | torch GEMM on natively expanded weights | fp32 dense |")
        print("|---:|---:|---:|---:|")
    single = None
    for rows in row_counts:
        x = torch.randn(rows, shape[1])
        count = max(2, repeats // max(1, rows // 64))
        ours = best_seconds(lambda x=x: prepared(x), count)
        if native_only:
            single = single or (ours if rows == 1 else best_seconds(lambda x=x: prepared(x[:1]), count))
            print(f"| {rows} | {ours * 1e3:.2f} | {ours / single:.2f} |")
            continue
        expanded = best_seconds(lambda x=x: linear._expanded_matmul(x, weight), count)
        dense = dense_seconds(shape, rows, count)
        print(f"| {rows} | {ours * 1e3:.2f} | {expanded * 1e3:.2f} | {dense * 1e3:.2f} |")


MODEL_SIZES = dict(hidden_size=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, value_dim=128,
                   intermediate_size=3072, context_length=4096)  # the shapes of Qwen3-0.6B


def make_model(kind: str, out: str) -> None:
    """A random model with the shapes of Qwen3-0.6B (tied embeddings, the 151 936-token vocabulary) in
    Q8_0 (the gguf package's quantizer) or Q4_K_M's mix: llama.cpp's rule gives Q6_K to the embedding
    and to attn_v and ffn_down in 14 of the 28 layers, Q4_K elsewhere. The gguf package cannot quantize
    k-quants, so those blocks are random bytes with scales of 0.002: right sizes, meaningless values."""
    from pathlib import Path

    import make_tiny_gguf as tiny
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    layers = MODEL_SIZES["n_layers"]

    def more_bits(layer: int) -> bool:  # llama.cpp's use_more_bits
        return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2

    def k_type(name: str) -> str:
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        wide = name.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(layer)
        return "Q6_K" if name == "token_embd.weight" or wide else "Q4_K"

    def encode(values: torch.Tensor, qtype: Q) -> Any:
        array = values.numpy().astype(np.float32)
        if qtype == Q.F32 or kind == "Q8_0":
            return array if qtype == Q.F32 else quantize(array, qtype)
        return array.shape  # filled in by name below

    class Writer(tiny.GGUFWriter):  # type: ignore[misc]
        def add_tensor(self, name: str, data: Any, raw_dtype: Any = None, **kw: Any) -> None:
            if name == "output.weight":
                return  # tied to the embedding, as in the real model
            if isinstance(data, tuple):
                ggml = moderate_blocks(k_type(name), data[0], data[1], rng)
                set_scales(ggml, 0.002)
                data, raw_dtype = ggml.raw.numpy(), Q[ggml.ggml_type.name]
            super().add_tensor(name, data, raw_dtype=raw_dtype, **kw)

    tiny.encode, tiny.GGUFWriter = encode, Writer
    vocab = Path(__file__).resolve().parent.parent / "tests" / "data" / "vocab" / "ggml-vocab-qwen2.gguf"
    tiny.make("qwen3", Path(out), dict(MODEL_SIZES), Q.Q8_0 if kind == "Q8_0" else Q.Q4_K, vocab, std=0.05)
    print(f"{out}: {os.path.getsize(out) / 1e6:.0f} MB")


def set_scales(weight: PackedTensor, value: float) -> None:
    """Every float16 scale field of the blocks set to `value`."""
    raw = weight.raw.reshape(-1, weight.ggml_type.type_size).numpy()
    for offset in F16_FIELDS[weight.ggml_type.name]:
        raw[:, offset:offset + 2] = np.full(len(raw), value, np.float16).view(np.uint8).reshape(-1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="*", default=TYPES)
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10, help="calls timed per measurement (the best counts)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all types; the best counts")
    parser.add_argument("--no-fallback", action="store_true", help="skip the (slow) torch fallback")
    parser.add_argument("--decode", metavar="GGUF", help="measure this model's decoding instead")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per --decode run")
    parser.add_argument("--sweep", metavar="TYPE", help="time this type's products by activation rows instead")
    parser.add_argument("--rows", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--shape", nargs=2, type=int, metavar=("N", "K"), default=list(SHAPES[0]),
                        help="--sweep's weight shape (default 3072 1024; 151936 1024: an output layer)")
    parser.add_argument("--native-only", action="store_true",
                        help="--sweep the native product alone, each row count's time over one row's")
    parser.add_argument("--int8", action="store_true", help="--sweep float32 against 8-bit activation products")
    parser.add_argument("--cpu-time", action="store_true", help="time by the process's CPU time, not the wall clock")
    parser.add_argument("--make-model", nargs=2, metavar=("Q8_0|Q4_K_M", "OUT"), help="write a model to --decode")
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK[0] = time.process_time
    if args.make_model:
        make_model(*args.make_model)
        return
    if args.sweep:
        sweep(args.sweep, args.rows, args.repeats, (args.shape[0], args.shape[1]), args.native_only, args.int8)
        return
    if args.decode:
        decode(args.decode, args.tokens, max(1, args.rounds))
        return
    rng = np.random.default_rng(0)
    weights = {(name, shape): moderate_blocks(name, *shape, rng) for name in args.types for shape in SHAPES}

    best: dict[tuple[Any, ...], float] = {}

    def keep(key: tuple[Any, ...], seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)

    for _ in range(args.rounds):
        for count in args.threads:
            with threads(count):
                for shape in SHAPES:
                    repeats = args.repeats if shape[0] < 10000 else max(2, args.repeats // 3)
                    keep(("dense", shape, 1, count), dense_seconds(shape, 1, repeats))
                    for name in args.types:
                        for path, seconds in measure(name, weights[name, shape], 1, repeats,
                                                     not args.no_fallback).items():
                            keep((path, name, shape, 1, count), seconds)
                shape = SHAPES[0]
                keep(("dense", shape, PROMPT_ROWS, count), dense_seconds(shape, PROMPT_ROWS, args.repeats))
                for name in args.types:
                    for path, seconds in measure(name, weights[name, shape], PROMPT_ROWS, max(2, args.repeats // 2),
                                                 not args.no_fallback).items():
                        keep((path, name, shape, PROMPT_ROWS, count), seconds)

    print(f"torch {torch.__version__}, {cpu_model()}, native kernels: {native.isa()} on "
          f"{'torch OpenMP' if native.uses_openmp() else 'own pool'} threads, load average {load_average()}; "
          f"best of {args.repeats} calls x {args.rounds} rounds\n")
    for shape in SHAPES:
        n_weights = shape[0] * shape[1]
        print(f"M = 1, W [{shape[0]} x {shape[1]}]: GB/s of stored weight bytes | Mweights/s\n")
        columns = [f"{path} {count}t" for count in args.threads for path in ("native", "native int8", "torch fallback")]
        print("| type | " + " | ".join(f"{c} GB/s | {c} Mw/s" for c in columns) + " |")
        print("|---|" + "---:|---:|" * len(columns))
        dense = [rate(4 * n_weights, n_weights, best.get(("dense", shape, 1, c))) for c in args.threads]
        print("| fp32 dense | " + " | ".join(f"{d} | n/a | n/a | n/a | n/a" for d in dense) + " |")
        for name in args.types:
            nbytes = weights[name, shape].nbytes
            cells = [rate(nbytes, n_weights, best.get((path, name, shape, 1, c)))
                     for c in args.threads for path in ("native", "int8", "fallback")]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
    shape = SHAPES[0]
    print(f"M = {PROMPT_ROWS}, W [{shape[0]} x {shape[1]}]: milliseconds per product\n")
    print("| type | " + " | ".join(f"native {c}t | torch fallback {c}t" for c in args.threads) + " |")
    print("|---|" + "---:|---:|" * len(args.threads))
    dense_ms = [f"{best[('dense', shape, PROMPT_ROWS, c)] * 1e3:.2f} | n/a" for c in args.threads]
    print("| fp32 dense | " + " | ".join(dense_ms) + " |")
    for name in args.types:
        cells = []
        for count in args.threads:
            for path in ("native", "fallback"):
                seconds = best.get((path, name, shape, PROMPT_ROWS, count))
                cells.append("n/a" if seconds is None else f"{seconds * 1e3:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
