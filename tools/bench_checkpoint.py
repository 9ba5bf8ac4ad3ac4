"""Memory of loading and converting a bfloat16 checkpoint directory: peak RSS against the checkpoint's size.

    python tools/bench_checkpoint.py [--layers 16] [--experts 0]

Makes (once, in $TFB_CACHE/bench/checkpoint-L or checkpoint-L-xE) a random Qwen3-shaped bfloat16 checkpoint (hidden
1024, 16 heads, 8 KV heads, head_dim 128, intermediate 3072, GPT-2's 50257-token tokenizer; about 600 MB at 16
layers), or with --experts E a Qwen3-MoE-shaped one (E experts of width 768 per layer, stored one tensor per expert
as real checkpoints are, which tfb stacks), then in fresh processes: `tfb.load(dir, dtype=torch.bfloat16)` to
the first logits, and `tfb convert dir out.gguf --outtype bf16`; each peak RSS (ru_maxrss) minus that of a process
that only imports tfb and torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOE_WIDTH = 768
RSS = "import resource\nrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
SCRIPTS = {
    "baseline": "import json, tfb, torch\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "load": "import json, sys, tfb, torch\nm = tfb.load(sys.argv[1], dtype=torch.bfloat16)\n"
            "m(torch.tensor([[1, 2, 3]]))\n" + RSS + "print(json.dumps({'rss': rss}))\n",
    "convert": "import json, sys, tfb, torch\nfrom tfb.sources.convert import convert\n"
               "convert(sys.argv[1], sys.argv[2], 'bf16')\n" + RSS + "print(json.dumps({'rss': rss}))\n",
}


def make(directory: Path, layers: int, experts: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_hf import write_gpt2_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    hidden, heads, kv, dim, inter, vocab = 1024, 16, 8, 128, 3072, 50257
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": rand(hidden) + 1}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {p + "input_layernorm.weight": rand(hidden) + 1,
                    p + "post_attention_layernorm.weight": rand(hidden) + 1,
                    p + "self_attn.q_proj.weight": rand(heads * dim, hidden),
                    p + "self_attn.k_proj.weight": rand(kv * dim, hidden),
                    p + "self_attn.v_proj.weight": rand(kv * dim, hidden),
                    p + "self_attn.o_proj.weight": rand(hidden, heads * dim),
                    p + "self_attn.q_norm.weight": rand(dim) + 1, p + "self_attn.k_norm.weight": rand(dim) + 1}
        if not experts:
            tensors |= {p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
                        p + "mlp.down_proj.weight": rand(hidden, inter)}
        else:
            tensors[p + "mlp.gate.weight"] = rand(experts, hidden)
            for e in range(experts):
                q = f"{p}mlp.experts.{e}."
                tensors |= {q + "gate_proj.weight": rand(MOE_WIDTH, hidden),
                            q + "up_proj.weight": rand(MOE_WIDTH, hidden),
                            q + "down_proj.weight": rand(hidden, MOE_WIDTH)}
    half = len(tensors) // 2  # two shards and an index, as real checkpoints
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / shard), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": dim,
        "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    if experts:
        config |= {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": experts,
                   "num_experts_per_tok": 4, "moe_intermediate_size": MOE_WIDTH, "norm_topk_prob": True}
    (directory / "config.json").write_text(json.dumps(config))
    write_gpt2_tokenizer(directory)


def run(name: str, *args: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPTS[name], *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--experts", type=int, default=0, help="experts per layer (0: a dense model)")
    args = parser.parse_args()
    cache = Path(os.environ.get("TFB_CACHE", Path.home() / ".cache" / "tfb")) / "bench"
    directory = cache / (f"checkpoint-{args.layers}" + (f"-x{args.experts}" if args.experts else ""))
    if not (directory / "config.json").is_file():
        make(directory, args.layers, args.experts)
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    base = run("baseline")
    load = run("load", str(directory)) - base
    convert = run("convert", str(directory), str(cache / "checkpoint.gguf")) - base
    kind = f", {args.experts} experts per layer" if args.experts else ""
    print(f"checkpoint {size / 2**20:.0f} MiB (bf16, 2 shards{kind})")
    print(f"tfb.load (bf16) to first logits: peak RSS over baseline {load / 2**20:.0f} MiB = {load / size:.2f} x")
    print(f"tfb convert --outtype bf16: peak RSS over baseline {convert / 2**20:.0f} MiB = {convert / size:.2f} x")


if __name__ == "__main__":
    main()
