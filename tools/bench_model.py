"""Load, memory and speed of a Qwen3-0.6B-shaped model: tfb against transformers (and llama.cpp through
llama-cpp-python when it is installed), each in a fresh process.

    python tools/bench_model.py                     # Q8_0 and Q4_K_M, everything
    python tools/bench_model.py --types Q4_K_M --skip transformers

The models are random (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072,
vocabulary 151936 with the real Qwen2 tokenizer, tied embeddings), made once by tools/make_tiny_gguf.py
into $TFB_CACHE/bench. Figures:
- load: wall time from process start to the first logits, and peak RSS (ru_maxrss) minus that of a process
  that only imports tfb and torch (for transformers and llama.cpp: their own imports); tfb also with
  expand=True (every weight expanded to float32 at load: speed over memory);
- speed: prompt processing (128 tokens) and greedy decoding (64 tokens), tokens per second; with
  --repeats N, the median of N runs, the engines taking turns. tfb is measured twice: as loaded by default
  (float32 products) and with int8_activations=True (activations rounded to 8 bits in the decoding
  products, as llama.cpp computes them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = {"hidden_size": 1024, "n_layers": 28, "n_heads": 16, "n_kv_heads": 8, "head_dim": 128, "value_dim": 128,
         "intermediate_size": 3072, "context_length": 40960}
VOCAB = ROOT / "tests" / "data" / "vocab" / "ggml-vocab-qwen2.gguf"
PROMPT, DECODE = 128, 64

# Each engine's work runs in a child process from these snippets: `path`, `prompt`, `decode` are given;
# the child prints one JSON line.
PRELUDE = "import json, resource, sys, time\nt_start = float(sys.argv[1])\n"
RSS = "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
CHILDREN = {
    "baseline tfb": "import tfb, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "baseline transformers": "import transformers, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "baseline llama.cpp": "import llama_cpp\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "llama.cpp load": """
from llama_cpp import Llama
llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
llm.eval([1, 2, 3, 4])
first = time.time() - t_start
""" + RSS + "print(json.dumps({'first_logits_s': first, 'rss': rss}))\n",
    "tfb load": """
import torch, tfb
model = tfb.load(path)
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4]]), last_only=True)
first = time.time() - t_start
""" + RSS + "print(json.dumps({'first_logits_s': first, 'rss': rss}))\n",
    "transformers load": """
import torch, os
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4]]))
first = time.time() - t_start
""" + RSS + "print(json.dumps({'first_logits_s': first, 'rss': rss}))\n",
    "tfb speed": """
import torch, tfb
from tfb.text.generate import Stats, generate_ids
model = tfb.load(path)
ids = torch.randint(0, 150000, (prompt,), generator=torch.Generator().manual_seed(0)).tolist()
list(generate_ids(model, ids[:8], max_tokens=4))  # warm-up
stats = Stats()
list(generate_ids(model, ids, max_tokens=decode, stats=stats))
print(json.dumps({'prompt_tps': stats.prompt_tokens_per_second, 'decode_tps': stats.generate_tokens_per_second}))
""",
    "transformers speed": """
import torch, os
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                             dtype=torch.bfloat16)
model.generation_config.eos_token_id = None
ids = torch.randint(0, 150000, (1, prompt), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    t = time.perf_counter(); model(ids); prefill = time.perf_counter() - t
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=decode, min_new_tokens=decode, do_sample=False, pad_token_id=0)
    total = time.perf_counter() - t
print(json.dumps({'prompt_tps': prompt / prefill, 'decode_tps': decode / max(total - prefill, 1e-9)}))
""",
    "llama.cpp speed": """
from llama_cpp import Llama
import random
llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
ids = [random.Random(0).randrange(150000) for _ in range(prompt)]
t = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(decode):
    llm.eval([llm.sample(temp=0.0)])
print(json.dumps({'prompt_tps': prompt / prefill, 'decode_tps': decode / (time.perf_counter() - t)}))
""",
}
CHILDREN["tfb int8 speed"] = CHILDREN["tfb speed"].replace("tfb.load(path)", "tfb.load(path, int8_activations=True)")
CHILDREN["tfb expand load"] = CHILDREN["tfb load"].replace("tfb.load(path)", "tfb.load(path, expand=True)")
LOAD_ENGINES = {"tfb": ["tfb", "tfb expand"], "transformers": ["transformers"], "llama.cpp": ["llama.cpp"]}
SPEED_ENGINES = {"tfb": ["tfb", "tfb int8"], "transformers": ["transformers"], "llama.cpp": ["llama.cpp"]}
ENGINE_NAMES = {"tfb": "tfb", "tfb int8": "tfb, int8 activations", "tfb expand": "tfb, expand=True (float32)",
                "transformers": "transformers", "llama.cpp": "llama.cpp"}


def model_file(kind: str) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_gguf import make

    cache = Path(os.environ.get("TFB_CACHE", Path.home() / ".cache" / "tfb")) / "bench"
    path = cache / f"qwen3-0.6b-shape-{kind}.gguf"
    if not path.is_file():
        from gguf import GGMLQuantizationType

        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        qtype = kind if kind == "Q4_K_M" else GGMLQuantizationType[kind]
        make("qwen3", tmp, SHAPE, qtype, VOCAB, std=0.02, tied=True)
        tmp.replace(path)
    return path


def run_child(name: str, path: Path, timeout: int = 1800) -> dict | None:
    code = PRELUDE + f"path, prompt, decode = {str(path)!r}, {PROMPT}, {DECODE}\n" + CHILDREN[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    result = subprocess.run([sys.executable, "-c", code, repr(start)], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {name}: failed: {tail[0]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def medians(runs: list[dict]) -> dict | None:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]} if runs else None


def bench(kind: str, skip: set[str], repeats: int = 1) -> dict:
    """Load figures once per engine; speed figures the median of `repeats` runs, the engines taking turns
    within each round so that a slow spell of a shared machine does not fall on one engine alone."""
    path = model_file(kind)
    size = path.stat().st_size
    out: dict = {"type": kind, "file_bytes": size}
    engines = [e for e in ("tfb", "transformers", "llama.cpp") if e not in skip]
    if "llama.cpp" in engines and not have("llama_cpp"):
        engines.remove("llama.cpp")
    for engine in engines:
        base = run_child(f"baseline {engine}", path)
        for name in LOAD_ENGINES[engine]:
            load = run_child(f"{name} load", path)
            if base and load:
                out[f"{name}_first_logits_s"] = load["first_logits_s"]
                out[f"{name}_rss_over_baseline"] = load["rss"] - base["rss"]
    speed_engines = [name for engine in engines for name in SPEED_ENGINES[engine]]
    runs: dict[str, list[dict]] = {name: [] for name in speed_engines}
    for _ in range(repeats):
        for name in speed_engines:
            result = run_child(f"{name} speed", path)
            if result:
                runs[name].append(result)
    for name, results in runs.items():
        speed = medians(results)
        if speed:
            out[f"{name}_prompt_tps"], out[f"{name}_decode_tps"] = speed["prompt_tps"], speed["decode_tps"]
    return out


def table(rows: list[dict]) -> str:
    def f(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "–"

    lines = ["| file | size | engine | first logits (s) | peak RSS over baseline | RSS / file | prompt tok/s | "
             "decode tok/s |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        size = row["file_bytes"]
        for engine, label in ENGINE_NAMES.items():
            rss = row.get(f"{engine}_rss_over_baseline")
            memory = "– | –" if rss is None else f"{rss / 2**20:.0f} MiB | {rss / size:.2f}x"
            lines.append(f"| {row['type']} | {size / 2**20:.0f} MiB | {label} | "
                         f"{f(row, f'{engine}_first_logits_s', '.2f')} | {memory} | "
                         f"{f(row, f'{engine}_prompt_tps', '.1f')} | {f(row, f'{engine}_decode_tps', '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K_M"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["tfb", "transformers", "llama.cpp"])
    parser.add_argument("--repeats", type=int, default=1, help="speed runs per engine; the median counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = [bench(kind, set(args.skip), args.repeats) for kind in args.types]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
