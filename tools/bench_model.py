"""Load, memory and speed of a Qwen3-0.6B-shaped model: tfb against transformers (and llama.cpp through
llama-cpp-python when it is installed), each in a fresh process. With --moe, decoding speed of a mixture
of experts against a dense model with as many active parameters.

    python tools/bench_model.py                     # Q8_0 and Q4_K_M, everything
    python tools/bench_model.py --types Q4_K_M --skip transformers
    python tools/bench_model.py --moe --types Q4_K_M --skip transformers --repeats 5

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

--moe: a qwen3moe model (hidden 1024, 16 layers, the attention above, 64 experts of width 512 in every
layer, top-8 chosen per token) against a dense qwen3 twin whose feed-forward is as wide as the 8 chosen
experts together (4096): per token both multiply the same weights (attention, 3 x 1024 x 4096 in each
feed-forward, the output layer), the MoE also its router (1024 x 64). Speed only: prompt and decode
tokens/s of each, and the MoE's time per decoded token over the dense one's; the two models take turns
within each round (A/B/A/B) and each figure is the median of --repeats rounds.

--hybrid: a qwen35 model of Qwen3.5-0.8B's shapes (hidden 1024, 24 layers: three gated delta-net layers to one
gated attention layer; see HYBRID_SHAPE) against an attention-only qwen3 of the same hidden size, depth and
feed-forward. Prompt processing: one forward call from an empty cache for 256 and for 1024 tokens, the models
taking turns, medians of --repeats rounds, in tokens per second of wall clock and of the process's CPU time (with
--threads 1 the two agree on an idle machine; on a shared one CPU time is the steadier). Memory while decoding at
contexts of 1024 and 16384 positions (--contexts): resident memory after loading and after the prompt and 64 greedy
tokens, and the bytes the cache holds in attention layers (keys and values: grow with the context) and recurrent
ones (constant).

    python tools/bench_model.py --hybrid --types Q8_0 --threads 1 --repeats 5
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
MOE_SHAPE = {**SHAPE, "n_layers": 16, "intermediate_size": 4096, "expert_count": 64, "expert_used_count": 8,
             "expert_intermediate_size": 512}
DENSE_TWIN = {**SHAPE, "n_layers": 16, "intermediate_size": 4096}  # 8 x 512: the MoE's active width
# --hybrid: Qwen3.5-0.8B's shapes (hidden 1024, 24 layers, every 4th full attention: 8 heads of 256, 2 KV heads,
# rope over 64 dims, a sigmoid output gate; the others gated delta-nets: 16 key and 16 value heads of 128, conv
# kernel 4; feed-forward 3584), against an attention-only qwen3 of the same hidden size, depth and feed-forward
# with Qwen3-0.6B's attention (16 heads of 128, 8 KV heads)
HYBRID_SHAPE = {"hidden_size": 1024, "n_layers": 24, "n_heads": 8, "n_kv_heads": 2, "head_dim": 256, "value_dim": 256,
                "rope_dims": 64, "intermediate_size": 3584, "context_length": 32768, "full_attention_interval": 4,
                "ssm_conv_kernel": 4, "ssm_state_size": 128, "ssm_group_count": 16, "ssm_time_step_rank": 16,
                "ssm_inner_size": 2048, "block_count": 24}  # block_count: the file's key (n_layers is derived from it)
ATTENTION_TWIN = {**SHAPE, "n_layers": 24, "intermediate_size": 3584, "context_length": 32768}
MODELS = {  # name -> (spec, shape)
    "qwen3-0.6b-shape": ("qwen3", SHAPE),
    "qwen3moe-a64x8-shape": ("qwen3moe", MOE_SHAPE),
    "qwen3-dense-twin-shape": ("qwen3", DENSE_TWIN),
    "qwen35-0.8b-shape": ("qwen35", HYBRID_SHAPE),
    "qwen3-24l-twin-shape": ("qwen3", ATTENTION_TWIN),
}
HYBRID_PROMPTS = [256, 1024]  # prompt lengths of --hybrid, each one forward call from an empty cache
HYBRID_CONTEXTS = [1024, 16384]  # contexts of the --hybrid memory figures
VOCAB = ROOT / "tests" / "data" / "vocab" / "ggml-vocab-qwen2.gguf"
PROMPT, DECODE = 128, 64
THREADS = [2]  # threads of every engine (--threads)

# Each engine's work runs in a child process from these snippets: `path`, `prompt`, `decode`, `threads` are given;
# the child prints one JSON line.
PRELUDE = "import json, resource, sys, time\nt_start = float(sys.argv[1])\n"
RSS = "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
# On CPUs with AMX, ggml's AMX matrix products crash in llama.cpp's decode (seen on an Intel Xeon VM):
# there llama.cpp runs without its extra weight buffers (AMX, repacking), ggml's plain CPU kernels, as
# tests/llama_cpp_worker.py does.
LLAMA_PLAIN = """
import llama_cpp.llama_cpp as bindings
if " amx_int8" in open("/proc/cpuinfo").read():
    default_params = bindings.llama_model_default_params
    def plain_params():
        params = default_params()
        params.use_extra_bufts = False
        return params
    bindings.llama_model_default_params = plain_params
"""
CHILDREN = {
    "baseline tfb": "import tfb, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "baseline transformers": "import transformers, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "baseline llama.cpp": "import llama_cpp\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "llama.cpp load": LLAMA_PLAIN + """
from llama_cpp import Llama
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False)
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
    "llama.cpp speed": LLAMA_PLAIN + """
from llama_cpp import Llama
import random
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False)
ids = [random.Random(0).randrange(150000) for _ in range(prompt)]
t = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(decode):
    llm.eval([llm.sample(temp=0.0)])
print(json.dumps({'prompt_tps': prompt / prefill, 'decode_tps': decode / (time.perf_counter() - t)}))
""",
}
# --hybrid: prompt speed, one forward from an empty cache per prompt length (after a 16-token warm-up)
CHILDREN["tfb prompt"] = """
import torch, tfb
model = tfb.load(path)
gen = torch.Generator().manual_seed(0)
out = {}
with torch.no_grad():
    model(torch.randint(0, 150000, (1, 16), generator=gen), model.new_cache(), last_only=True)
    for n in prompts:
        ids = torch.randint(0, 150000, (1, n), generator=gen)
        t, cpu = time.perf_counter(), time.process_time()
        model(ids, model.new_cache(), last_only=True)
        out[str(n)], out[f"{n} cpu"] = n / (time.perf_counter() - t), n / (time.process_time() - cpu)
print(json.dumps(out))
"""
# --hybrid: memory while decoding at a context of `context` positions: the prompt goes in 1024 positions a call,
# then `decode` greedy steps. RSS is the process's resident memory now (VmRSS, after gc and malloc_trim give back
# the prompt's temporaries), once after loading and the first logits and once after the decoding; the cache's
# own tensors are counted by layer state (attention: SequenceState, allocated capacity; recurrent: the rest).
CHILDREN["tfb context"] = """
import ctypes, gc, torch, tfb
from tfb.nn.cache import SequenceState
libc = ctypes.CDLL("libc.so.6")
def rss():
    gc.collect(); libc.malloc_trim(0)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
def nbytes(state):
    values = [v for x in vars(state).values() for v in (x if isinstance(x, list) else [x])]
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))
model = tfb.load(path)
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    model(torch.tensor([[1, 2, 3, 4]]), last_only=True)
    loaded = rss()
    cache = model.new_cache()
    ids = torch.randint(0, 150000, (1, context - decode), generator=gen)
    t = time.perf_counter()
    for s in range(0, ids.shape[1], 1024):
        logits = model(ids[:, s:s + 1024], cache, last_only=True)
    fill = time.perf_counter() - t
    token = int(logits[0, -1].argmax())
    t = time.perf_counter()
    for _ in range(decode):
        token = int(model(torch.tensor([[token]]), cache, last_only=True)[0, -1].argmax())
    decode_tps = decode / (time.perf_counter() - t)
    after = rss()
states = [s for s in cache.layers if s is not None]
attention = sum(nbytes(s) for s in states if isinstance(s, SequenceState))
recurrent = sum(nbytes(s) for s in states if not isinstance(s, SequenceState))
print(json.dumps({'loaded_rss': loaded, 'rss': after, 'attention_cache': attention, 'recurrent_state': recurrent,
                  'positions': cache.length, 'fill_s': fill, 'decode_tps': decode_tps}))
"""
CHILDREN["tfb int8 speed"] = CHILDREN["tfb speed"].replace("tfb.load(path)", "tfb.load(path, int8_activations=True)")
CHILDREN["tfb expand load"] = CHILDREN["tfb load"].replace("tfb.load(path)", "tfb.load(path, expand=True)")
LOAD_ENGINES = {"tfb": ["tfb", "tfb expand"], "transformers": ["transformers"], "llama.cpp": ["llama.cpp"]}
SPEED_ENGINES = {"tfb": ["tfb", "tfb int8"], "transformers": ["transformers"], "llama.cpp": ["llama.cpp"]}
ENGINE_NAMES = {"tfb": "tfb", "tfb int8": "tfb, int8 activations", "tfb expand": "tfb, expand=True (float32)",
                "transformers": "transformers", "llama.cpp": "llama.cpp"}


def model_file(kind: str, model: str = "qwen3-0.6b-shape") -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_gguf import make

    cache = Path(os.environ.get("TFB_CACHE", Path.home() / ".cache" / "tfb")) / "bench"
    path = cache / f"{model}-{kind}.gguf"
    if not path.is_file():
        from gguf import GGMLQuantizationType

        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        qtype = kind if kind == "Q4_K_M" else GGMLQuantizationType[kind]
        spec, shape = MODELS[model]
        make(spec, tmp, shape, qtype, VOCAB, std=0.02, tied=True)
        tmp.replace(path)
    return path


def child_env() -> dict[str, str]:
    """The environment of the children: tfb from this checkout, before whatever PYTHONPATH held; torch's
    threads (and so tfb's native ones) as --threads says."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": str(THREADS[0])}


def run_child(name: str, path: Path, timeout: int = 1800, context: int = 0) -> dict | None:
    given = (f"path, prompt, decode, threads = {str(path)!r}, {PROMPT}, {DECODE}, {THREADS[0]}\n"
             f"prompts, context = {HYBRID_PROMPTS!r}, {context}\n")
    code = PRELUDE + given + CHILDREN[name]
    env = child_env()
    start = time.time()
    result = subprocess.run([sys.executable, "-c", code, repr(start)], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {name}: failed: {tail[0]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          env=child_env()).returncode == 0


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
    speed_names = [name for engine in engines for name in SPEED_ENGINES[engine]]
    runs: dict[str, list[dict]] = {name: [] for name in speed_names}
    for _ in range(repeats):
        for name in speed_names:
            result = run_child(f"{name} speed", path)
            if result:
                runs[name].append(result)
    for name, results in runs.items():
        speed = medians(results)
        if speed:
            out[f"{name}_prompt_tps"], out[f"{name}_decode_tps"] = speed["prompt_tps"], speed["decode_tps"]
    return out


def speed_engines(skip: set[str]) -> list[str]:
    engines = [e for e in ("tfb", "transformers", "llama.cpp") if e not in skip]
    if "llama.cpp" in engines and not have("llama_cpp"):
        engines.remove("llama.cpp")
    return [name for engine in engines for name in SPEED_ENGINES[engine]]


def bench_moe(kind: str, skip: set[str], repeats: int = 1) -> dict:
    """Speed of the MoE model and its dense twin: in each round every engine runs the MoE, then the dense
    model (A/B), so that a slow spell of the shared machine falls on both; medians over the rounds."""
    files = {"moe": model_file(kind, "qwen3moe-a64x8-shape"), "dense": model_file(kind, "qwen3-dense-twin-shape")}
    out: dict = {"type": kind, **{f"{m}_file_bytes": path.stat().st_size for m, path in files.items()}}
    names = speed_engines(skip)
    runs: dict[tuple[str, str], list[dict]] = {(name, m): [] for name in names for m in files}
    for _ in range(repeats):
        for name in names:
            for m, path in files.items():
                result = run_child(f"{name} speed", path)
                if result:
                    runs[name, m].append(result)
    for (name, m), results in runs.items():
        speed = medians(results)
        if speed:
            out[f"{name}_{m}_prompt_tps"], out[f"{name}_{m}_decode_tps"] = speed["prompt_tps"], speed["decode_tps"]
            out[f"{name}_{m}_decode_runs"] = [r["decode_tps"] for r in results]
    return out


def bench_hybrid(kind: str, repeats: int = 1) -> dict:
    """Prompt speed of the Qwen3.5-shaped hybrid and its attention-only twin (in each round the hybrid, then
    the twin: A/B; medians over the rounds), then each one's memory at the contexts of HYBRID_CONTEXTS (once:
    memory does not depend on the neighbours)."""
    files = {"hybrid": model_file(kind, "qwen35-0.8b-shape"), "attention": model_file(kind, "qwen3-24l-twin-shape")}
    out: dict = {"type": kind, **{f"{m}_file_bytes": path.stat().st_size for m, path in files.items()}}
    runs: dict[str, list[dict]] = {m: [] for m in files}
    for _ in range(repeats):
        for m, path in files.items():
            result = run_child("tfb prompt", path)
            if result:
                runs[m].append(result)
    for m, results in runs.items():
        for n in HYBRID_PROMPTS:
            for key, name in ((str(n), f"{m}_prompt{n}"), (f"{n} cpu", f"{m}_prompt{n}_cpu")):
                values = [r[key] for r in results if key in r]
                if values:
                    out[f"{name}_tps"] = statistics.median(values)
                    out[f"{name}_runs"] = values
    for context in HYBRID_CONTEXTS:
        for m, path in files.items():
            result = run_child("tfb context", path, timeout=3600, context=context)
            if result:
                out[f"{m}_context{context}"] = result
    return out


def hybrid_table(row: dict) -> str:
    size = f"{row['hybrid_file_bytes'] / 2**20:.0f} / {row['attention_file_bytes'] / 2**20:.0f} MiB"
    lines = [f"{row['type']} (hybrid / attention-only: {size})", "",
             "| prompt tokens | clock | hybrid tok/s | attention-only tok/s | hybrid time / attention-only time |",
             "|---:|---|---:|---:|---:|"]
    for n in HYBRID_PROMPTS:
        for suffix, clock in (("", "wall"), ("_cpu", "CPU")):
            h, a = row.get(f"hybrid_prompt{n}{suffix}_tps"), row.get(f"attention_prompt{n}{suffix}_tps")
            if h and a:
                lines.append(f"| {n} | {clock} | {h:.1f} | {a:.1f} | {a / h:.2f}x |")
    lines += ["", "| model | context | RSS after load | RSS decoding | attention cache | recurrent state | "
              "decode tok/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    mib = 2 ** 20
    for m, label in (("hybrid", "hybrid"), ("attention", "attention-only")):
        for context in HYBRID_CONTEXTS:
            r = row.get(f"{m}_context{context}")
            if r:
                lines.append(f"| {label} | {r['positions']} | {r['loaded_rss'] / mib:.0f} MiB | "
                             f"{r['rss'] / mib:.0f} MiB | {r['attention_cache'] / mib:.1f} MiB | "
                             f"{r['recurrent_state'] / mib:.2f} MiB | "
                             f"{r['decode_tps']:.1f} |")
    return "\n".join(lines)


def moe_table(rows: list[dict]) -> str:
    lines = ["| file (dense / MoE size) | engine | dense prompt tok/s | MoE prompt tok/s | dense decode tok/s | "
             "MoE decode tok/s | MoE time per token / dense |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        for engine, label in ENGINE_NAMES.items():
            keys = [f"{engine}_{m}_{what}_tps" for what in ("prompt", "decode") for m in ("dense", "moe")]
            if not all(key in row for key in keys):
                continue
            dp, mp, dd, md = (row[key] for key in keys)
            sizes = f"{row['dense_file_bytes'] / 2**20:.0f} / {row['moe_file_bytes'] / 2**20:.0f} MiB"
            lines.append(f"| {row['type']} ({sizes}) | {label} | {dp:.1f} | {mp:.1f} | {dd:.1f} | {md:.1f} | "
                         f"{dd / md:.2f}x |")
    return "\n".join(lines)


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
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine")
    parser.add_argument("--moe", action="store_true", help="decode speed of the MoE model against its dense twin")
    parser.add_argument("--hybrid", action="store_true",
                        help="prompt speed and decoding memory of a Qwen3.5-shaped hybrid and an attention-only twin")
    parser.add_argument("--contexts", type=int, nargs="*", help=f"--hybrid: contexts of the memory figures "
                        f"(default {HYBRID_CONTEXTS}; none: skip them)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    THREADS[0] = args.threads
    if args.contexts is not None:
        HYBRID_CONTEXTS[:] = args.contexts
    if args.hybrid:
        rows = [bench_hybrid(kind, args.repeats) for kind in args.types]
        print("\n\n".join(hybrid_table(row) for row in rows))
    elif args.moe:
        rows = [bench_moe(kind, set(args.skip), args.repeats) for kind in args.types]
        print(moe_table(rows))
    else:
        rows = [bench(kind, set(args.skip), args.repeats) for kind in args.types]
        print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
