"""`tfb convert CHECKPOINT_DIR OUT.gguf`: a checkpoint directory written as llama.cpp's converter writes it.

The checkpoint is read through its spec's naming table (tfb.sources.checkpoint): the same metadata keys,
tokenizer keys, tensor names, shapes and values. What is left is the converter's choice of storage type per
tensor (vectors, `*_norm.weight` and the table's `keep_f32` names stay F32; the others take --outtype, Q8_0
falling back to F16 for rows that are not whole blocks) and gguf-py's writer and quantizers, used here as the
converter uses them. Tensors are read, converted and written one at a time: the peak memory is one tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfb.errors import InputError
from tfb.gguf.reader import MetaValue
from tfb.sources.checkpoint import CheckpointSource

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# gguf.LlamaFileType of each output type (general.file_type)
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
Progress = Callable[[int, int], None]


def _f32_patterns(source: CheckpointSource) -> list[re.Pattern[str]]:
    return [re.compile(re.escape(p).replace(r"\{i\}", r"(\d+)")) for p in source.table.keep_f32]


def _kept(name: str, keep: list[re.Pattern[str]], block: int | None) -> bool:
    """Whether a keep_f32 name matches. The converter matches the name of the block numbered as the checkpoint
    tensor's first number: a tensor read under another block's name (naming.Rename) is not kept."""
    for p in keep:
        m = p.fullmatch(name)
        if m and (not m.groups() or block is None or int(m.group(1)) == block):
            return True
    return False


def storage_type(name: str, shape: tuple[int, ...], outtype: str, keep: list[re.Pattern[str]],
                 block: int | None = None) -> str:
    """The ggml type the converter stores a tensor in (`block`: the first number in the checkpoint tensor's name)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or _kept(name, keep, block):
        return "F32"
    wanted = outtype.upper()
    if wanted == "Q8_0" and shape[-1] % 32:
        return "F16"  # the converter's fallback when rows are not whole Q8_0 blocks
    return wanted


CHUNK = 1 << 22  # elements encoded at once: the converter's types all encode row by row


class _Encoded:
    """A tensor's bytes in `gtype`, by gguf-py's quantizers as the converter calls them, produced a few rows at a
    time as the writer stores them (`tofile`), so that a large tensor is never widened to float32 whole."""

    def __init__(self, x: torch.Tensor, gtype: str, nbytes: int) -> None:
        self.x, self.gtype, self.nbytes = x, gtype, nbytes

    def tofile(self, out: Any) -> None:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        rows = self.x.reshape(-1, self.x.shape[-1]) if self.x.ndim else self.x.reshape(1, 1)
        step = max(1, CHUNK // max(rows.shape[1], 1))
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step]
            if chunk.dtype == torch.bfloat16:  # the converter widens bfloat16 before anything else
                chunk = chunk.float()
            quantize(chunk.numpy(), GGMLQuantizationType[self.gtype]).tofile(out)


def _write_meta(writer: object, key: str, meta: MetaValue) -> None:
    from gguf import GGUFValueType

    kinds = {t.name.lower(): t for t in GGUFValueType}
    if meta.is_array:
        inner = meta.type[6:-1]
        values = list(meta.value) if inner == "string" else meta.value.tolist()
        writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=kinds[inner])  # type: ignore[attr-defined]
    else:
        writer.add_key_value(key, meta.value, kinds[meta.type])  # type: ignore[attr-defined]


def convert(directory: str | Path, out: str | Path, outtype: str = "f16", vocab_pre: str | None = None,
            spec_dirs: tuple[str | Path, ...] = (), progress: Progress | None = None) -> Path:
    """Write the checkpoint as a GGUF file; returns its path."""
    from gguf import GGMLQuantizationType, GGUFWriter

    if outtype not in OUTTYPES:
        raise InputError(f"--outtype {outtype!r} is not one the converter writes; use one of {', '.join(OUTTYPES)}")
    out = Path(out)
    with CheckpointSource(directory, spec_dirs, streaming=True) as source:
        tokenizer = source.tokenizer_metadata(vocab_pre)
        keep = _f32_patterns(source)
        written = {k.replace("{arch}", source.arch) for k, r in source.table.metadata.items() if r and r.written}
        writer = GGUFWriter(path=None, arch=source.arch)  # writes general.architecture itself
        writer.add_type("model")
        writer.add_name(source.path.resolve().name)
        for key, meta in source.metadata.items():
            if key in written and not key.startswith("tokenizer."):
                _write_meta(writer, key, meta)
        writer.add_file_type(FILE_TYPES[outtype])
        writer.add_quantization_version(2)
        for key, meta in tokenizer.items():
            _write_meta(writer, key, meta)
        names = [n for n in source.tensors if n in source._rules]
        unread = [n for n in source.tensors if n not in source._rules]
        if unread:
            raise InputError(f"{source.path}: the naming table of spec `{source.spec_name}` maps no GGUF name to "
                             f"{', '.join(unread[:4])}{' and more' if len(unread) > 4 else ''}; converting would drop "
                             "them")
        plan = []
        for name in names:
            info = source.tensors[name]
            gtype = storage_type(name, info.shape, outtype, keep, source.stored_block(name))
            qtype = GGMLQuantizationType[gtype]
            from gguf import GGML_QUANT_SIZES

            block, size = GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(info.shape)) // block * size
            writer.add_tensor_info(name, info.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
            plan.append((name, gtype, nbytes))
        tmp = out.with_name(out.name + ".partial")
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total, done = sum(n for _, _, n in plan), 0
        for name, gtype, nbytes in plan:
            writer.write_tensor_data(_Encoded(source.tensor(name), gtype, nbytes))  # type: ignore[arg-type]
            done += nbytes
            if progress is not None:
                progress(done, total)
        writer.close()
        tmp.replace(out)
    return out
