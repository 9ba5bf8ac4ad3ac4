"""A GGUF file as editable parts, and a writer for them: the base of the hostile corpus.

Unlike the `gguf` package's writer, every count, length, type id and offset can be set to anything,
including values that no valid file has, independently of the rest of the file.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfb.gguf.reader import GGUFFile, MetaValue

TYPE_IDS = {"uint8": 0, "int8": 1, "uint16": 2, "int16": 3, "uint32": 4, "int32": 5, "float32": 6, "bool": 7,
            "string": 8, "array": 9, "uint64": 10, "int64": 11, "float64": 12}
FORMATS = {"uint8": "<B", "int8": "<b", "uint16": "<H", "int16": "<h", "uint32": "<I", "int32": "<i",
           "float32": "<f", "bool": "<?", "uint64": "<Q", "int64": "<q", "float64": "<d"}


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return u64(len(raw)) + raw


def scalar(type_name: str, value: Any) -> bytes:
    """A typed metadata value: its type id, then the value."""
    if type_name == "string":
        return u32(TYPE_IDS["string"]) + gguf_string(value)
    return u32(TYPE_IDS[type_name]) + struct.pack(FORMATS[type_name], value)


def array(type_name: str, values: list[Any], count: int | None = None) -> bytes:
    """A typed metadata array; `count` overrides the element count written before the elements."""
    head = u32(TYPE_IDS["array"]) + u32(TYPE_IDS[type_name]) + u64(len(values) if count is None else count)
    if type_name == "string":
        return head + b"".join(gguf_string(v) for v in values)
    return head + b"".join(struct.pack(FORMATS[type_name], v) for v in values)


def encode_value(meta: MetaValue) -> bytes:
    if not meta.is_array:
        return scalar(meta.type, meta.value)
    element = meta.type[len("array["):-1]
    if element == "string":
        return array("string", list(meta.value))
    values = np.asarray(meta.value).astype(np.uint8 if element == "bool" else np.dtype(FORMATS[element]))
    return u32(TYPE_IDS["array"]) + u32(TYPE_IDS[element]) + u64(values.size) + values.tobytes()


@dataclass
class TensorEntry:
    name: bytes
    dims: list[int]  # ggml order: innermost first
    type_id: int
    data: bytes
    offset: int | None = None  # the data offset to claim; None: where the data is placed
    info: bytes | None = None  # a raw tensor-info record written instead of the encoded one

    def encode_info(self, placed: int) -> bytes:
        if self.info is not None:
            return self.info
        return (gguf_string(self.name) + u32(len(self.dims)) + b"".join(u64(d) for d in self.dims)
                + u32(self.type_id) + u64(placed if self.offset is None else self.offset))


@dataclass
class Layout:
    """Header fields, metadata records and tensors; `to_bytes` lays them out as a GGUF writer does."""

    version: int
    kv: list[tuple[str, bytes]]  # key -> its whole record (name, type id, value)
    tensors: list[TensorEntry]
    alignment: int  # where tensor data is placed; general.alignment is whatever the records say
    magic: bytes = b"GGUF"
    n_tensors: int | None = None  # None: the true count
    n_kv: int | None = None

    @classmethod
    def read(cls, path: Any) -> Layout:
        with GGUFFile(path) as f:
            kv = [(k, gguf_string(k) + encode_value(meta)) for k, meta in f.metadata.items()]
            tensors = [TensorEntry(t.name.encode("utf-8", "surrogateescape"), list(reversed(t.shape)),
                                   t.ggml_type.id, bytes(f.tensor_data(t.name))) for t in f.tensors.values()]
            return cls(version=f.version, kv=kv, tensors=tensors, alignment=f.alignment)

    def copy(self) -> Layout:
        return copy.deepcopy(self)

    def set(self, key: str, value: bytes) -> Layout:
        """Give `key` this typed value, in place, or as a new last record."""
        record = gguf_string(key) + value
        for i, (k, _) in enumerate(self.kv):
            if k == key:
                self.kv[i] = (k, record)
                return self
        self.kv.append((key, record))
        return self

    def raw(self, key: str, record: bytes) -> Layout:
        """Replace the whole record of `key`, its name included, with raw bytes."""
        self.kv = [(k, record if k == key else v) for k, v in self.kv]
        return self

    def drop(self, key: str) -> Layout:
        self.kv = [(k, v) for k, v in self.kv if k != key]
        return self

    def tensor(self, name: str) -> TensorEntry:
        return next(t for t in self.tensors if t.name == name.encode())

    def drop_tensor(self, name: str) -> Layout:
        self.tensors = [t for t in self.tensors if t.name != name.encode()]
        return self

    def placed(self) -> list[int]:
        """Where each tensor's data goes, relative to the data section."""
        out, at = [], 0
        for t in self.tensors:
            out.append(at)
            at += -(-len(t.data) // self.alignment) * self.alignment
        return out

    def header(self) -> bytes:
        head = self.magic + u32(self.version)
        head += u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
        head += u64(len(self.kv) if self.n_kv is None else self.n_kv)
        head += b"".join(record for _, record in self.kv)
        return head + b"".join(t.encode_info(p) for t, p in zip(self.tensors, self.placed(), strict=True))

    def to_bytes(self) -> bytes:
        out = bytearray(self.header())
        for t in self.tensors:
            out += bytes(-len(out) % self.alignment)  # each tensor starts aligned; the gguf writer
            out += t.data  # pads after the last one too
        out += bytes(-len(out) % self.alignment)
        return bytes(out)
