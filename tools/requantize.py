"""Re-store the weights of a GGUF file in another ggml type, like llama-quantize does, in pure Python.

    python tools/requantize.py IN.gguf OUT.gguf Q4_0

Matrices are quantized with the `gguf` package's reference quantizers, or ggml's own (tools/ggml_quants.py,
built from the pinned sdist) for the types the package cannot write (the k-quants); vectors, norms, the MoE
router, position embeddings and Mamba's conv weights stay F32 (llama.cpp's rules). A matrix whose rows do not
split into whole blocks keeps its type. Tests use this for types llama.cpp's converter cannot write (Q4_0, Q4_K...).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

KEEP_F32 = ("_norm.weight", "ffn_gate_inp.weight", "position_embd.weight", "rope_freqs.weight", "shortconv.conv.weight",
            "rope_factors_long.weight", "rope_factors_short.weight", "ssm_conv1d.weight")


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = GGUFValueType(field.types[0])
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=GGUFValueType(field.types[-1]))
        else:
            writer.add_key_value(key, value, vtype)


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: the dimensions up to the last one above 1 in ggml order, i.e. leading 1s of the torch
    shape do not count (qwen2moe's shared-expert gate [1, n_embd] is a vector to llama-quantize)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return len(dims)


def target_type(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType | None:
    """The type a tensor is stored in, or None to keep it as it is."""
    # llama-quantize: only tensors named *weight (not Mamba's ssm_a / ssm_d), never the small conv weights
    if _n_dims(shape) < 2 or name.endswith(KEEP_F32) or not name.endswith("weight"):
        return None
    block = GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else None


def quantize_values(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Rows of float32 `values` as `qtype` blocks ([..., bytes per row] uint8): gguf's reference quantizer, or
    ggml's `quantize_row_*_ref` where gguf has none."""
    try:
        return quantize(values, qtype)
    except NotImplementedError:
        from ggml_quants import GGMLQuants

        block, type_size = GGML_QUANT_SIZES[qtype]
        blocks = GGMLQuants().quantize(qtype.name, values, type_size, block)
        return blocks.reshape(*values.shape[:-1], values.shape[-1] // block * type_size)


def requantize(src: str, dst: str, qtype: GGMLQuantizationType) -> None:
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    _copy_metadata(reader, writer)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # torch order
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape) \
            if t.tensor_type != GGMLQuantizationType.F32 else np.asarray(t.data).reshape(shape)
        store = target_type(t.name, shape, qtype)
        if store is None:
            writer.add_tensor(t.name, values.astype(np.float32))
        else:
            writer.add_tensor(t.name, quantize_values(values, store), raw_dtype=store)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("type", help="ggml type name, e.g. Q4_0")
    args = parser.parse_args(argv)
    requantize(args.src, args.dst, GGMLQuantizationType[args.type.upper()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
