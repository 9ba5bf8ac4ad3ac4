"""The serving engine's turn (sampling every row, then one batched decoding step) by CPU time, at 1 and at 8
rows, with what of it is packed products and what the rest; no HTTP. Not a test (timings); run by hand:

    OMP_NUM_THREADS=1 TFB_THREADS=1 python tools/bench_serve_step.py            # greedy rows
    OMP_NUM_THREADS=1 TFB_THREADS=1 python tools/bench_serve_step.py --temperature 1 --int8-activations
    OMP_NUM_THREADS=1 TFB_THREADS=1 python tools/bench_serve_step.py --profile 10   # cProfile of 8 rows' turns

CPU time of the process (time.process_time), not wall time: on a shared machine the neighbours move wall
time far more than any change to the step. Each row is a different prompt of ~25 tokens, computed first.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "Write a short story about the sea, the number {i}, and a lighthouse keeper who counts the waves."


class ProductClock:
    """Adds up the CPU time of the native packed products (tfb.quant.native.ops.Prepared calls)."""

    def __init__(self) -> None:
        from tfb.quant.native import ops

        self.seconds = 0.0
        call = ops.Prepared.__call__

        def timed(prepared: Any, x: torch.Tensor) -> torch.Tensor:
            start = time.process_time()
            try:
                return call(prepared, x)
            finally:
                self.seconds += time.process_time() - start

        ops.Prepared.__call__ = timed  # type: ignore[method-assign]


def engine_with(model: Any, tok: Any, rows: int, temperature: float) -> Any:
    """An engine with `rows` jobs whose prompts are computed and first tokens sampled (all decoding)."""
    from tfb.serve.engine import Engine, Job
    from tfb.text.sampling import Sampling

    engine = Engine(model, tok, parallel=rows, prompt_cache=0)
    for i in range(rows):
        sampling = Sampling(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=i)
        engine.submit(Job(prompt=tok.encode(PROMPT.format(i=i), True), max_tokens=100_000,
                          emit=lambda chunk: None, sampling=sampling))
    engine._admit()
    while any(r.computed < len(r.job.prompt) for r in engine.running):
        engine._turn()
    for _ in range(2):  # warm: first products, cache growth
        engine._turn()
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: bench_model.py's "
                        "Qwen3-0.6B-shaped Q4_K_M file, made once)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--turns", type=int, default=10, help="turns timed per row count (median reported)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy rows")
    parser.add_argument("--int8-activations", action="store_true")
    parser.add_argument("--cache-type", choices=["float32", "float16"], default=None)
    parser.add_argument("--profile", type=int, default=0, metavar="TURNS",
                        help="then profile that many turns of the largest row count (cProfile, CPU time)")
    args = parser.parse_args()
    import tfb

    model_path = args.model
    if model_path is None:
        from bench_model import model_file

        model_path = model_file("Q4_K_M")
    cache_dtype = torch.float16 if args.cache_type == "float16" else None
    model = tfb.load(model_path, context_length=2048, int8_activations=args.int8_activations,
                     cache_dtype=cache_dtype)
    tok = tfb.load_tokenizer(model_path)
    clock = ProductClock()
    medians = {}
    with torch.inference_mode():
        for rows in args.rows:
            engine = engine_with(model, tok, rows, args.temperature)
            times = []
            clock.seconds = 0.0
            for _ in range(args.turns):
                start = time.process_time()
                engine._turn()
                times.append(time.process_time() - start)
            assert len(engine.running) == rows and engine.max_batch == rows
            medians[rows] = statistics.median(times) * 1000
            products = clock.seconds / args.turns * 1000
            print(f"{rows} rows: {medians[rows]:.1f} ms a turn (CPU, median of {args.turns}); means: products "
                  f"{products:.1f} ms, the rest {sum(times) / args.turns * 1000 - products:.1f} ms")
        first, last = min(medians), max(medians)
        if first != last:
            print(f"tokens/s of {last} rows over {first}: "
                  f"{last / first * medians[first] / medians[last]:.2f}x")
        if args.profile:
            engine = engine_with(model, tok, last, args.temperature)
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for _ in range(args.profile):
                engine._turn()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
