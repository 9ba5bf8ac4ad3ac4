"""Make a small random GGUF model from a spec, with a real tokenizer: the built-in default model.

    python tools/make_tiny_gguf.py --spec qwen3 --out tiny.gguf
    python tools/make_tiny_gguf.py --spec qwen3 --hidden 1024 --layers 28 --heads 16 --kv-heads 8 \
        --head-dim 128 --ff 3072 --vocab-file big-vocab.gguf --type Q8_0 --out q3.gguf

Metadata keys and tensor names come from the spec itself (its hparam rules and tensor templates), so
the file loads through exactly the path a converted file takes. Weights are random with a fixed seed;
matrices are stored in any type the `gguf` package can quantize.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tfb.build import build_modules, plan_tensors  # noqa: E402
from tfb.gguf.hparams import build_config  # noqa: E402
from tfb.gguf.reader import MetaValue  # noqa: E402
from tfb.spec import Spec, load_spec  # noqa: E402

DEFAULT_VOCAB = ROOT / "tests" / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"
SIZES = {  # CLI option -> config field
    "hidden": "hidden_size", "layers": "n_layers", "heads": "n_heads", "kv_heads": "n_kv_heads",
    "head_dim": "head_dim", "ff": "intermediate_size", "context": "context_length", "experts": "expert_count",
    "experts_used": "expert_used_count", "expert_ff": "expert_intermediate_size",
}


def _metadata(spec: Spec, arch: str, values: dict[str, int | float]) -> dict[str, MetaValue]:
    meta: dict[str, MetaValue] = {}
    for field, value in values.items():
        rule = getattr(spec.hparams, field)
        if rule is not None and rule.keys():
            kind = "float32" if isinstance(value, float) else "uint32"
            meta[rule.keys()[0].replace("{arch}", arch)] = MetaValue(value, kind)
    return meta


def encode(values: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    array = values.numpy().astype(np.float32)
    if qtype == GGMLQuantizationType.F32:
        return array
    try:
        return quantize(array, qtype)
    except NotImplementedError:
        sys.exit(f"the gguf package cannot quantize to {qtype.name}")


def make(spec_name: str, out: Path, sizes: dict[str, int], qtype: GGMLQuantizationType, vocab_file: Path,
         seed: int = 0, std: float = 0.2, spec_dirs: Sequence[str | Path] = ()) -> None:
    """spec_name: a name looked up on the spec search path (spec_dirs, then TFB_SPEC_PATH, then the
    packaged specs) or a path."""
    spec = load_spec(spec_name, spec_dirs)
    arch = spec.match[0] if spec.match else spec.name
    vocab = GGUFReader(vocab_file)
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].data)
    values: dict[str, int | float] = {"vocab_size": n_vocab, "norm_eps": 1e-5, **sizes}
    meta = _metadata(spec, arch, values)
    config = build_config(spec, meta, set(), arch=arch, where=str(out))
    model = build_modules(spec, config)
    gen = torch.Generator().manual_seed(seed)
    writer = GGUFWriter(str(out), arch)
    writer.add_name(f"tiny random {spec.name}")
    for key, mv in meta.items():
        writer.add_key_value(key, mv.value, GGUFValueType.FLOAT32 if mv.type == "float32" else GGUFValueType.UINT32)
    for key, field in vocab.fields.items():
        if key.startswith("tokenizer."):
            vtype = GGUFValueType(field.types[0])
            sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in plan_tensors(model, spec, present=set()):
        if t.need != "required":
            continue
        if t.slot.endswith("bias"):
            values_t = torch.randn(t.shape, generator=gen) * 0.1
        elif len(t.shape) == 1:
            values_t = torch.rand(t.shape, generator=gen) + 0.5
        else:
            values_t = torch.randn(t.shape, generator=gen) * std
        store = qtype if len(t.shape) > 1 and t.shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0 \
            and t.slot != "ffn_gate_inp" else GGMLQuantizationType.F32
        data = encode(values_t, store)
        writer.add_tensor(t.name, data, raw_dtype=None if store == GGMLQuantizationType.F32 else store)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="qwen3", help="spec name or path")
    parser.add_argument("--spec-dir", action="append", default=[], metavar="DIR",
                        help="extra directory of specs, searched before TFB_SPEC_PATH and the packaged ones")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--type", default="F32", help="ggml type of the matrices, e.g. F32, F16, Q8_0, Q4_K")
    parser.add_argument("--vocab-file", type=Path, default=DEFAULT_VOCAB, help="GGUF whose tokenizer to copy")
    parser.add_argument("--seed", type=int, default=0)
    defaults = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ff=128, context=2048)
    for option in SIZES:
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=defaults.get(option))
    args = parser.parse_args(argv)
    sizes = {field: getattr(args, option) for option, field in SIZES.items() if getattr(args, option) is not None}
    make(args.spec, args.out, sizes, GGMLQuantizationType[args.type.upper()], args.vocab_file, args.seed,
         spec_dirs=args.spec_dir)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
