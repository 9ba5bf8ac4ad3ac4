"""Make a small random GGUF model from a spec, with a real tokenizer: the built-in default model.

    python tools/make_tiny_gguf.py --spec qwen3 --out tiny.gguf
    python tools/make_tiny_gguf.py --spec qwen3 --hidden 1024 --layers 28 --heads 16 --kv-heads 8 \
        --head-dim 128 --ff 3072 --vocab-file big-vocab.gguf --type Q4_K_M --tied --out q3.gguf

Metadata keys and tensor names come from the spec itself (its hparam rules and tensor templates), so
the file loads through exactly the path a converted file takes. Weights are random with a fixed seed.
`--type` is a ggml type for every matrix, or a llama-quantize mix (Q4_K_M); types the `gguf` package
cannot quantize get random valid blocks of a plausible magnitude.
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
from tfb.gguf.reader import MetaValue  # noqa: E402
from tfb.hparams import build_config  # noqa: E402
from tfb.spec import Spec, load_spec  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from ggml_blocks import random_blocks  # noqa: E402

DEFAULT_VOCAB = ROOT / "tests" / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"
SIZES = {  # CLI option -> config field
    "hidden": "hidden_size", "layers": "n_layers", "heads": "n_heads", "kv_heads": "n_kv_heads",
    "head_dim": "head_dim", "ff": "intermediate_size", "context": "context_length", "experts": "expert_count",
    "experts_used": "expert_used_count", "expert_ff": "expert_intermediate_size",
}


def _metadata(spec: Spec, arch: str, values: dict[str, int | float | list[int]]) -> dict[str, MetaValue]:
    """The file's keys for config fields; a list is one value per layer (e.g. head_count_kv 0 on the layers
    of a hybrid that are not attention)."""
    meta: dict[str, MetaValue] = {}
    for field, value in values.items():
        rule = getattr(spec.hparams, field)
        if rule is not None and rule.keys():
            key = rule.keys()[0].replace("{arch}", arch)
            if isinstance(value, list):
                meta[key] = MetaValue(np.asarray(value, dtype=np.uint32), "array[uint32]")
            else:
                meta[key] = MetaValue(value, "float32" if isinstance(value, float) else "uint32")
    return meta


# float16 scale of random blocks for types without a quantizer: weights of about 0.02, like a real model
RANDOM_SCALE = {"Q2_K": 2e-4, "Q3_K": 2e-4, "Q4_K": 1e-4, "Q5_K": 5e-5, "Q6_K": 2e-5}
MIXES = ("Q4_K_M",)


def encode(values: torch.Tensor, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    array = values.numpy().astype(np.float32)
    if qtype == GGMLQuantizationType.F32:
        return array
    try:
        return quantize(array, qtype)
    except NotImplementedError:
        rows = array.reshape(-1, array.shape[-1])
        blocks = random_blocks(qtype.name, rows.size // GGML_QUANT_SIZES[qtype][0], rng,
                               scale=RANDOM_SCALE.get(qtype.name, 1e-3))
        return blocks.reshape(*array.shape[:-1], -1)


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama-quantize's use_more_bits: the first and last eighth of the layers, and every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


# tensors llama-quantize never quantizes (src/llama-quant.cpp): the small convolution kernels of recurrent layers
UNQUANTIZED = ("ssm_conv1d", "shortconv_conv")

# llama-quantize's fallback for rows whose length is not a multiple of the type's block (tensor_type_fallback in
# src/llama-quant.cpp): a 32-weight type of about the same size; F16 where even that does not fit
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def storage_type(kind: str, slot: str, shape: tuple[int, ...], layer: int | None, n_layers: int,
                 output_slot: str, fallback: bool = False) -> GGMLQuantizationType:
    """The type a tensor is stored in: F32 for vectors and the router; else `kind`, or for a mix its rule.
    Rows that the type's blocks do not divide: F32, or with `fallback` the type llama-quantize falls back to."""
    f32 = GGMLQuantizationType.F32
    if len(shape) < 2 or slot == "ffn_gate_inp" or slot in UNQUANTIZED:
        return f32
    if kind == "Q4_K_M":
        if slot == output_slot:
            qtype = GGMLQuantizationType.Q6_K
        elif slot == "attn_qkv":  # a fused Q/K/V projection: one step up
            qtype = GGMLQuantizationType.Q5_K
        # llama-quantize matches "ffn_down" anywhere in the name: the experts' and shared experts' too
        elif (slot == "attn_v" or slot.startswith("ffn_down")) and layer is not None and _more_bits(layer, n_layers):
            qtype = GGMLQuantizationType.Q6_K
        else:
            qtype = GGMLQuantizationType.Q4_K
    else:
        qtype = GGMLQuantizationType[kind]
    if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    if not fallback:
        return f32
    qtype = GGMLQuantizationType[FALLBACK.get(qtype.name, qtype.name)]
    return qtype if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0 else GGMLQuantizationType.F16


def make(spec_name: str, out: Path, sizes: dict[str, int | list[int]], qtype: GGMLQuantizationType | str,
         vocab_file: Path, seed: int = 0, std: float = 0.2, spec_dirs: Sequence[str | Path] = (), tied: bool = False,
         fallback: bool = False, extra: dict[str, list[int]] | None = None) -> None:
    """spec_name: a name looked up on the spec search path (spec_dirs, then TFB_SPEC_PATH, then the
    packaged specs) or a path. qtype: a ggml type or a mix name. tied: no output tensor (the token
    embedding stands in). fallback: rows the type's blocks do not divide get llama-quantize's fallback type
    (storage_type), not F32. extra: more metadata arrays ("{arch}" in a key: the architecture), for keys that
    llama.cpp requires and the spec does not read."""
    spec = load_spec(spec_name, spec_dirs)
    arch = spec.match[0] if spec.match else spec.name
    vocab = GGUFReader(vocab_file)
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].data)
    values: dict[str, int | float | list[int]] = {"vocab_size": n_vocab, "norm_eps": 1e-5, **sizes}
    meta = _metadata(spec, arch, values)
    config = build_config(spec, meta, set(), arch=arch, where=str(out))
    model = build_modules(spec, config)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    kind = qtype if isinstance(qtype, str) else qtype.name
    output_slot = "token_embd" if tied else "output"
    writer = GGUFWriter(str(out), arch)
    writer.add_name(f"tiny random {spec.name}")
    for key, mv in meta.items():
        if mv.is_array:
            writer.add_array(key, mv.value.tolist())
        else:
            writer.add_key_value(key, mv.value, GGUFValueType.FLOAT32 if mv.type == "float32" else GGUFValueType.UINT32)
    for key, array in (extra or {}).items():
        writer.add_array(key.replace("{arch}", arch), array)
    for key, field in vocab.fields.items():
        if key.startswith("tokenizer."):
            vtype = GGUFValueType(field.types[0])
            sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in plan_tensors(model, spec, present=set()):
        if t.need != "required" or (tied and t.slot == "output"):
            continue
        if t.slot.endswith("bias"):
            values_t = torch.randn(t.shape, generator=gen) * 0.1
        elif len(t.shape) == 1 or t.slot == "ssm_a":
            values_t = torch.rand(t.shape, generator=gen) + 0.5
            if t.slot == "ssm_a":  # the converters store A = -exp(A_log) < 0: a decay, never a growth
                values_t = -values_t
        else:
            values_t = torch.randn(t.shape, generator=gen) * std
        layer = int(t.name.split(".")[1]) if t.name.startswith("blk.") else None
        store = storage_type(kind, t.slot, t.shape, layer, config.n_layers, output_slot, fallback)
        data = encode(values_t, store, rng)
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
    parser.add_argument("--type", default="F32", help="ggml type of the matrices (F32, F16, Q8_0, Q4_K...) or a "
                        f"mix ({', '.join(MIXES)})")
    parser.add_argument("--tied", action="store_true", help="no output tensor: the token embedding stands in")
    parser.add_argument("--std", type=float, default=0.2, help="spread of the random weights")
    parser.add_argument("--vocab-file", type=Path, default=DEFAULT_VOCAB, help="GGUF whose tokenizer to copy")
    parser.add_argument("--seed", type=int, default=0)
    defaults = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ff=128, context=2048)
    for option in SIZES:
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=defaults.get(option))
    args = parser.parse_args(argv)
    sizes = {field: getattr(args, option) for option, field in SIZES.items() if getattr(args, option) is not None}
    kind = args.type.upper()
    make(args.spec, args.out, sizes, kind if kind in MIXES else GGMLQuantizationType[kind], args.vocab_file,
         args.seed, std=args.std, spec_dirs=args.spec_dir, tied=args.tied)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
