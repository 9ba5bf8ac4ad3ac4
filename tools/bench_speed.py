"""Side-by-side speed of tfb and llama.cpp (llama-cpp-python) on the same GGUF files: prompt processing
(256 tokens in one forward) and greedy decoding (64 tokens), tokens per second, and peak memory.

    PYTHONPATH=$(.venv/bin/python tools/llama_cpp.py --build) .venv/bin/python tools/bench_speed.py
    .venv/bin/python tools/bench_speed.py --shapes smollm2-135m --types Q8_0 --repeats 3

The files are random models of real shapes (SHAPES below: layer count, widths, heads, vocabulary size),
made once by tools/make_tiny_gguf.py into $TFB_CACHE/bench (default ~/.cache/tfb/bench), so anyone can
rerun the table. Their vocabularies are llama.cpp's SentencePiece test vocabulary padded with filler
tokens to the model's size (the bench feeds token ids, never text: only the size matters).

Every run is a fresh process per engine: load, a short warm-up, then one forward over a 256-token prompt
(timed: "prompt") and 64 greedy steps of one token each (timed: "decode"). The engines take turns within
each round, in a rotated order each round, so a slow spell of a shared machine does not fall on one engine
alone; each figure is the median over --repeats rounds, and the ratios are tfb's median over llama.cpp's.
"RSS" is the child's peak resident memory (VmHWM) minus that of a process that only imports the engine.

Engines: "tfb" as loaded by default (exact float32 products on the packed weights), "tfb int8" with
int8_activations=True (activations rounded to 8 bits in the products, as llama.cpp computes them),
"llama.cpp" (llama-cpp-python, the pinned version built by tools/llama_cpp.py for this CPU). All use
--threads threads (tfb: torch's and its native kernels' pools).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from bench_model import HYBRID_SHAPE, LLAMA_PLAIN  # noqa: E402

VOCAB = ROOT / "tests" / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"  # padded to each shape's size
PROMPT, DECODE = 256, 64

# name -> spec, sizes (make_tiny_gguf config fields), vocabulary size, tied output, types benched by default
SHAPES: dict[str, dict] = {
    "smollm2-135m": {"spec": "llama", "vocab": 49152, "tied": True, "types": ["Q4_1", "Q4_K_M", "Q8_0"],
                     "sizes": {"hidden_size": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64,
                               "intermediate_size": 1536, "context_length": 8192}},
    "gemma3-270m": {"spec": "gemma3", "vocab": 262144, "tied": True, "types": ["Q4_K_M"],
                    "sizes": {"hidden_size": 640, "n_layers": 18, "n_heads": 4, "n_kv_heads": 1, "head_dim": 256,
                              "value_dim": 256, "intermediate_size": 2048, "context_length": 32768,
                              "sliding_window": 512}},
    "qwen3-0.6b": {"spec": "qwen3", "vocab": 151936, "tied": True, "types": ["Q4_K_M", "Q8_0", "BF16"],
                   "sizes": {"hidden_size": 1024, "n_layers": 28, "n_heads": 16, "n_kv_heads": 8, "head_dim": 128,
                             "value_dim": 128, "intermediate_size": 3072, "context_length": 40960}},
    # Qwen3-30B-A3B's layer (hidden 2048, 32/4 heads of 128, 128 experts of 768, top 8) at 8 layers: ~5.4 G
    # weights (4.8 G of them experts), about 3 GiB in Q4_K_M; per token each layer reads what the real one reads
    "qwen3moe-30b-a3b-8l": {"spec": "qwen3moe", "vocab": 151936, "tied": False, "types": ["Q4_K_M"],
                            "sizes": {"hidden_size": 2048, "n_layers": 8, "n_heads": 32, "n_kv_heads": 4,
                                      "head_dim": 128, "value_dim": 128, "intermediate_size": 6144,
                                      "expert_count": 128, "expert_used_count": 8, "expert_intermediate_size": 768,
                                      "context_length": 40960}},
    # hybrids: LFM2-350M (10 gated short-convolution layers of kernel 3 and 6 attention layers, head_count_kv 0
    # marking the convolution layers as the converter writes it) and Qwen3.5-0.8B (three gated delta-net layers
    # to one gated attention layer; tools/bench_model.py's HYBRID_SHAPE)
    "lfm2-350m": {"spec": "lfm2", "vocab": 65536, "tied": True, "types": ["Q4_K_M", "Q8_0"],
                  "sizes": {"hidden_size": 1024, "n_layers": 16, "n_heads": 16, "head_dim": 64,
                            "n_kv_heads": [0, 0, 8, 0, 0, 8, 0, 0, 8, 0, 8, 0, 8, 0, 8, 0], "intermediate_size": 4608,
                            "context_length": 128000, "shortconv_l_cache": 3}},
    "qwen35-0.8b": {"spec": "qwen35", "vocab": 248320, "tied": True, "types": ["Q4_K_M", "Q8_0"],
                    "sizes": HYBRID_SHAPE,
                    # llama.cpp reads M-RoPE sections (Qwen3.5-0.8B's; tfb's spec does not need them: for text
                    # every section reads the same position)
                    "extra": {"{arch}.rope.dimension_sections": [11, 11, 10, 0]}},
}
DEFAULT_SHAPES = ["smollm2-135m", "gemma3-270m", "qwen3-0.6b", "qwen3moe-30b-a3b-8l", "lfm2-350m", "qwen35-0.8b"]

PRELUDE = "import json, resource, sys, time\n"
# Peak RSS of this process image: VmHWM. Not ru_maxrss, which Linux carries across exec from the forking
# process (this script, grown large by making a model file) and so reads the parent's size.
RSS = ("rss = next((int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmHWM:')),"
       " None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n")
# tokens per second of wall time, and of the process's CPU time (user + system, all threads): on a shared machine
# with --threads 1 the latter is what the engine would do on a core of its own (less the memory bandwidth
# that the neighbours take); with more threads it counts the time threads spin waiting for each other
REPORT = ("print(json.dumps({'prompt_tps': prompt / prefill, 'decode_tps': decode / steps, 'rss': rss, "
          "'prompt_cpu_tps': prompt / prefill_cpu, 'decode_cpu_tps': decode / steps_cpu}))\n")
# Each child is given `path`, `prompt`, `decode`, `threads`, `vocab` and prints one JSON line.
CHILDREN = {
    "baseline tfb": "import tfb, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "baseline llama.cpp": "import llama_cpp\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "tfb": """
import torch, tfb
model = tfb.load(path, context_length=1024)
ids = torch.randint(0, vocab, (prompt,), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    cache = model.new_cache()  # warm-up: a short prompt and a few steps
    logits = model(ids[None, :16], cache, last_only=True)
    for _ in range(4):
        logits = model(logits[:, -1].argmax(-1, keepdim=True), cache, last_only=True)
    cache = model.new_cache()
    c, t = time.process_time(), time.perf_counter()
    logits = model(ids[None], cache, last_only=True)
    prefill, prefill_cpu = time.perf_counter() - t, time.process_time() - c
    c, t = time.process_time(), time.perf_counter()
    for _ in range(decode):
        logits = model(logits[:, -1].argmax(-1, keepdim=True), cache, last_only=True)
    steps, steps_cpu = time.perf_counter() - t, time.process_time() - c
""" + RSS + REPORT,
    "llama.cpp": LLAMA_PLAIN + """
from llama_cpp import Llama
import numpy as np
llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
ids = np.random.default_rng(0).integers(0, vocab, prompt).tolist()
llm.eval(ids[:16])  # warm-up: a short prompt and a few steps
for _ in range(4):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
llm.reset()
c, t = time.process_time(), time.perf_counter()
llm.eval(ids)
prefill, prefill_cpu = time.perf_counter() - t, time.process_time() - c
c, t = time.process_time(), time.perf_counter()
for _ in range(decode):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
steps, steps_cpu = time.perf_counter() - t, time.process_time() - c
""" + RSS + REPORT,
}
CHILDREN["tfb int8"] = CHILDREN["tfb"].replace("context_length=1024)", "context_length=1024, int8_activations=True)")
ENGINES = ["tfb", "tfb int8", "llama.cpp"]
BASELINE = {"tfb": "tfb", "tfb int8": "tfb", "llama.cpp": "llama.cpp"}


def cache_dir() -> Path:
    return Path(os.environ.get("TFB_CACHE", Path.home() / ".cache" / "tfb")) / "bench"


def padded_vocab(size: int) -> Path:
    """llama.cpp's SentencePiece test vocabulary with filler tokens up to `size` (normal tokens, lowest scores)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    path = cache_dir() / f"vocab-spm-{size}.gguf"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(VOCAB)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    extra = size - len(tokens)
    if extra < 0:
        raise SystemExit(f"vocabulary size {size} is below the base vocabulary's {len(tokens)}")
    padded = {
        "tokenizer.ggml.tokens": tokens + [f"<filler_{i}>" for i in range(extra)],
        "tokenizer.ggml.scores": reader.fields["tokenizer.ggml.scores"].contents() + [-1e9] * extra,
        "tokenizer.ggml.token_type": reader.fields["tokenizer.ggml.token_type"].contents() + [1] * extra,
    }
    tmp = path.with_suffix(".part")
    writer = GGUFWriter(str(tmp), "llama")
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = GGUFValueType(field.types[0])
            sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, padded.get(key, field.contents()), vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    tmp.replace(path)
    return path


def model_file(shape: str, kind: str) -> Path:
    """The random model of `shape` in storage type (or llama-quantize mix) `kind`, made once and cached."""
    from gguf import GGMLQuantizationType
    from make_tiny_gguf import MIXES, make

    path = cache_dir() / f"{shape}-{kind}.gguf"
    if not path.is_file():
        info = SHAPES[shape]
        tmp = path.with_suffix(".part")
        qtype = kind if kind in MIXES else GGMLQuantizationType[kind]
        make(info["spec"], tmp, info["sizes"], qtype, padded_vocab(info["vocab"]), std=0.02, tied=info["tied"],
             fallback=True, extra=info.get("extra"))
        tmp.replace(path)
    return path


def child_env(threads: int, llama_path: str | None) -> dict[str, str]:
    """tfb from this checkout (and llama-cpp-python's build directory) before whatever PYTHONPATH held; every
    engine's thread count."""
    paths = [str(ROOT), llama_path, os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "OMP_NUM_THREADS": str(threads), "TFB_THREADS": str(threads)}


def run_child(name: str, path: Path, vocab: int, env: dict[str, str], threads: int) -> dict | None:
    given = f"path, prompt, decode, threads, vocab = {str(path)!r}, {PROMPT}, {DECODE}, {threads}, {vocab}\n"
    result = subprocess.run([sys.executable, "-c", PRELUDE + given + CHILDREN[name]], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=3600)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        print(f"  {name} on {path.name}: failed: {tail[0]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench(shape: str, kind: str, engines: list[str], repeats: int, env: dict[str, str], threads: int) -> dict:
    path = model_file(shape, kind)
    vocab = SHAPES[shape]["vocab"]
    base = {engine: run_child(f"baseline {engine}", path, vocab, env, threads)
            for engine in sorted({BASELINE[e] for e in engines})}
    runs: dict[str, list[dict]] = {engine: [] for engine in engines}
    for round_ in range(repeats):
        for engine in engines[round_ % len(engines):] + engines[:round_ % len(engines)]:
            result = run_child(engine, path, vocab, env, threads)
            if result:
                runs[engine].append(result)
                print(f"  {shape} {kind} {engine}: prompt {result['prompt_tps']:.1f} tok/s, "
                      f"decode {result['decode_tps']:.1f} tok/s (by CPU time {result['prompt_cpu_tps']:.1f}, "
                      f"{result['decode_cpu_tps']:.1f})", file=sys.stderr)
    out: dict = {"shape": shape, "type": kind, "file_bytes": path.stat().st_size}
    for engine, results in runs.items():
        if not results:
            continue
        baseline = base.get(BASELINE[engine])
        out[engine] = {
            "prompt_tps": statistics.median(r["prompt_tps"] for r in results),
            "decode_tps": statistics.median(r["decode_tps"] for r in results),
            "prompt_cpu_tps": statistics.median(r["prompt_cpu_tps"] for r in results),
            "decode_cpu_tps": statistics.median(r["decode_cpu_tps"] for r in results),
            "rss_over_baseline": statistics.median(r["rss"] for r in results) - baseline["rss"] if baseline else None,
            "rss": statistics.median(r["rss"] for r in results), "baseline_rss": baseline["rss"] if baseline else None,
            "decode_runs": [round(r["decode_tps"], 2) for r in results],
            "prompt_runs": [round(r["prompt_tps"], 2) for r in results],
        }
    return out


def table(rows: list[dict]) -> str:
    """Wall-time figures, tfb's over llama.cpp's, memory; then the same speeds by CPU time (see REPORT)."""
    lines = ["| shape | type | file | engine | prompt tok/s | decode tok/s | prompt / llama.cpp | "
             "decode / llama.cpp | by CPU time: prompt, decode / llama.cpp | RSS over baseline | RSS / file |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        size = row["file_bytes"]
        ref = row.get("llama.cpp")
        for engine in ENGINES:
            fig = row.get(engine)
            if not fig:
                continue
            if ref and engine != "llama.cpp":
                ratios = (f"{fig['prompt_tps'] / ref['prompt_tps']:.2f}x | {fig['decode_tps'] / ref['decode_tps']:.2f}x"
                          f" | {fig['prompt_cpu_tps'] / ref['prompt_cpu_tps']:.2f}x, "
                          f"{fig['decode_cpu_tps'] / ref['decode_cpu_tps']:.2f}x")
            else:
                ratios = "– | – | –"
            rss = fig["rss_over_baseline"]
            memory = "– | –" if rss is None else f"{rss / 2**20:.0f} MiB | {rss / size:.2f}x"
            lines.append(f"| {row['shape']} | {row['type']} | {size / 2**20:.0f} MiB | {engine} | "
                         f"{fig['prompt_tps']:.1f} | {fig['decode_tps']:.1f} | {ratios} | {memory} |")
    return "\n".join(lines)


def machine(env: dict[str, str]) -> dict:
    """CPU model and the instruction sets that matter here, and the versions of what runs."""
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_int8",
              "amx_bf16"]
    versions = subprocess.run(
        [sys.executable, "-c", "import json, torch, numpy, gguf\n"
         "try:\n import llama_cpp; ll = llama_cpp.__version__\nexcept ImportError:\n ll = None\n"
         "print(json.dumps({'torch': torch.__version__, 'numpy': numpy.__version__, 'llama-cpp-python': ll}))"],
        capture_output=True, text=True, env=env, cwd=ROOT)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return {"cpu": cpu, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "python": platform.python_version(), "tfb": rev.strip(),
            **(json.loads(versions.stdout) if versions.returncode == 0 else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=sorted(SHAPES))
    parser.add_argument("--types", nargs="+", help="storage types (default: each shape's own list)")
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each figure is the median")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every engine")
    parser.add_argument("--no-build", action="store_true",
                        help="do not build llama-cpp-python (tools/llama_cpp.py --build); import it from PYTHONPATH")
    parser.add_argument("--json", type=Path, help="also write the figures and the machine here")
    args = parser.parse_args(argv)
    llama_path = None
    if "llama.cpp" in args.engines and not args.no_build:
        import llama_cpp as tool  # tools/llama_cpp.py: tools/ is first on this script's path

        llama_path = str(tool.llama_cpp_python_dir())
    env = child_env(args.threads, llama_path)
    info = machine(env)
    print(json.dumps(info), file=sys.stderr)
    rows = []
    for shape in args.shapes:
        for kind in args.types or SHAPES[shape]["types"]:
            rows.append(bench(shape, kind, list(args.engines), args.repeats, env, args.threads))
            print(table(rows[-1:]), file=sys.stderr)
    print(f"{args.threads} threads, medians of {args.repeats} rounds, prompt {PROMPT} tokens, decode {DECODE}; "
          f"{info.get('cpu')}, flags {' '.join(info.get('flags', []))}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "threads": args.threads, "repeats": args.repeats,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
