"""A checkpoint directory's safetensors shards: the tensor index, checked, and memory-mapped tensors.

A checkpoint is one `model.safetensors` or shards listed by `model.safetensors.index.json`. Every shard
header is read and checked here before the safetensors library maps it: a header that lies (an extent past
the end of the file, a byte count that does not fit the shape and dtype, an unknown dtype) or an index that
names a missing shard or a tensor no shard has gets one message naming the file and the tensor. Tensors
come from `safetensors.safe_open`, which maps the file: a tensor read as stored costs no copy.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfb.errors import WeightError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 * 2**20  # the safetensors library's own limit on the JSON header
# safetensors dtype -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    shard: Path
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


def read_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one shard, each checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise WeightError(f"{path}: safetensors header length {length} runs past the end of the file "
                                  f"({size} bytes): the file is truncated or not a safetensors file")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightError(f"{path}: cannot read the safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise WeightError(f"{path}: safetensors header is not a JSON object")
    data_size = size - 8 - length
    out: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _entry(path, name, entry, data_size)
    return out


def _entry(path: Path, name: str, entry: Any, data_size: int) -> StoredTensor:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise WeightError(f"{where}: header entry is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise WeightError(f"{where}: dtype {dtype!r} is not one tfb reads (supported: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WeightError(f"{where}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    stored = StoredTensor(name, path, dtype, tuple(shape))
    if offsets[1] - offsets[0] != stored.nbytes:
        raise WeightError(f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape "
                          f"{list(shape)} of {dtype} needs {stored.nbytes}: the header lies about offsets or dtype")
    if offsets[1] > data_size:
        raise WeightError(f"{where}: data_offsets {offsets} run past the end of the data ({data_size} bytes): "
                          "the file is truncated")
    return stored


class SafetensorsDir:
    """Every tensor of a checkpoint directory by name, and their values, memory-mapped."""

    def __init__(self, directory: Path, streaming: bool = False) -> None:
        self.directory = directory
        # streaming: each tensor maps its shard anew and unmaps it when freed, so that a pass over every tensor
        # (tfb convert) keeps one tensor's pages resident, not the whole checkpoint's
        self.streaming = streaming
        self.tensors: dict[str, StoredTensor] = {}
        index = directory / INDEX
        if index.is_file():
            self._read_index(index)
        elif (directory / SINGLE).is_file():
            self.tensors = read_header(directory / SINGLE)
        else:
            shards = sorted(directory.glob("*.safetensors"))
            if not shards:
                raise WeightError(f"{directory}: no {SINGLE}, {INDEX} or other *.safetensors file")
            for shard in shards:  # unindexed shards: every file's tensors
                self.tensors.update(read_header(shard))
        self._open: dict[Path, Any] = {}

    def _read_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        if not isinstance(weight_map, dict):
            raise WeightError(f"{index}: weight_map is not an object of tensor name -> shard file")
        headers: dict[str, dict[str, StoredTensor]] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise WeightError(f"{index}: tensor {name!r} names shard {shard!r}, not a file name in the directory")
            if shard not in headers:
                path = self.directory / shard
                if not path.is_file():
                    raise WeightError(f"{index}: tensor {name!r} is in shard {shard}, which is missing from "
                                      f"{self.directory}")
                headers[shard] = read_header(path)
            if name not in headers[shard]:
                raise WeightError(f"{index}: tensor {name!r} is mapped to shard {shard}, which has no such tensor")
            self.tensors[name] = headers[shard][name]

    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored, backed by the shard's map."""
        from safetensors import safe_open

        stored = self.tensors[name]
        handle = self._open.get(stored.shard)
        if handle is None:
            handle = safe_open(str(stored.shard), framework="pt")
            if not self.streaming:
                self._open[stored.shard] = handle
        tensor: torch.Tensor = handle.get_tensor(name)
        return tensor

    def close(self) -> None:
        self._open.clear()  # tensors handed out keep their maps alive


_MADV_DONTNEED = 4  # Linux <sys/mman.h>
_PAGE = 4096


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a tensor read from a shard's map, once its values have been copied elsewhere:
    they stop counting in the process's memory (a file map's pages are read back from the file if the range is
    touched again, so nothing is lost). Only the pages wholly inside the tensor's bytes, so that the tensors next
    to it keep theirs. Linux only; elsewhere, and on any failure, a no-op."""
    if not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    import ctypes

    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
    if last > first:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
