"""A GGUF reader for untrusted files.

Every count and length is checked against the bytes that remain before anything is allocated, every
tensor's extent against the data section (with integer overflow ruled out, not wrapped), and every
failure is a `GGUFError` naming the file, the byte offset and the key or tensor. Tensor data stays in a
private memory map: nothing is read until a tensor is asked for.
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tfb.errors import GGUFError
from tfb.gguf.ggml_types import GGML_TYPES, GGMLType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_KEY_BYTES = 65536  # longest metadata key or tensor name (llama.cpp's names are under 100 bytes)
INT64_MAX = 2**63 - 1
_ARCH_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# the fewest bytes one record can take, so that a count is checked against the bytes left before any loop
MIN_KV_BYTES = 8 + 4 + 1  # name length, value type, a one-byte value (an empty name is legal)
MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, dimension count, one dimension, type, offset

# value type id -> (name, struct format or None for string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
    8: ("string", None), 9: ("array", None), 10: ("uint64", "<Q"), 11: ("int64", "<q"),
    12: ("float64", "<d"),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
          11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class MetaValue:
    """One metadata value: Python scalar, str, list[str] or a numpy array, with its GGUF type."""

    value: Any
    type: str  # e.g. "uint32", "string", "array[float32]"

    @property
    def is_array(self) -> bool:
        return self.type.startswith("array")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: outermost first (ggml lists innermost first)
    ggml_type: GGMLType
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class _RawInfo:
    """A tensor-info record as read, before its extent is checked against the data section."""

    at: int  # byte offset of the record, for messages
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    rel_offset: int  # from the start of the data section
    nbytes: int


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading. A FIFO or device would block or never end: refuse it, after
    opening without blocking and checking what was opened (not what the name pointed to a moment ago)."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GGUFError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at byte {self.pos} of {self.size})")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes, {self.size - self.pos} remain")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"length of {what}")
        if limit is not None and n > limit:
            raise self.fail(f"{what} claims {n} bytes, over the {limit}-byte limit")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # keep the exact bytes (tokenizers need them); surrogates mark the invalid ones
            return raw.decode("utf-8", errors="surrogateescape")


class GGUFFile:
    """A parsed GGUF header over a memory-mapped file. Use as a context manager or call close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open_regular(self.path)
        try:
            if os.fstat(self._file.fileno()).st_size == 0:
                raise GGUFError(f"{self.path}: empty file, not GGUF")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            self._file.close()
            raise GGUFError(f"{self.path}: cannot map ({e})") from None
        except GGUFError:
            self._file.close()
            raise
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- parsing

    def _parse(self) -> None:
        cur = _Cursor(self._map, self.path)
        magic = cur.take(4, "magic") if cur.size >= 4 else b""
        if magic != MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
        version = cur.u32("version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in VERSIONS:
                raise GGUFError(f"{self.path}: big-endian GGUF v{swapped}; tfb reads little-endian files "
                                "(convert without --bigendian)")
            raise GGUFError(f"{self.path}: GGUF version {version} is not supported (supported: 2, 3)")
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key count")
        if n_tensors > (cur.size - cur.pos) // MIN_TENSOR_INFO_BYTES:
            raise cur.fail(f"claims {n_tensors} tensors, more than the file could describe")
        if n_kv > (cur.size - cur.pos - n_tensors * MIN_TENSOR_INFO_BYTES) // MIN_KV_BYTES:
            raise cur.fail(f"claims {n_kv} metadata keys, more than the file could hold")

        self.metadata: dict[str, MetaValue] = {}
        for i in range(n_kv):
            key = cur.string(f"name of metadata key #{i}", MAX_KEY_BYTES)
            if key in self.metadata:
                raise cur.fail(f"metadata key {key!r} appears twice")
            self.metadata[key] = self._value(cur, key)

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            meta = self.metadata["general.alignment"]
            if meta.type != "uint32":
                raise GGUFError(f"{self.path}: general.alignment is {meta.type}, must be uint32")
            alignment = int(meta.value)
            if alignment == 0 or alignment & (alignment - 1):
                raise GGUFError(f"{self.path}: general.alignment {alignment} is not a power of two")
        self.alignment = alignment

        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        data_start = -(-cur.pos // alignment) * alignment
        if n_tensors and data_start > cur.size:
            raise cur.fail(f"truncated: the tensor data section (from byte {data_start}) is missing")
        self.data_offset = data_start
        self.tensors: dict[str, TensorInfo] = {}
        for info in infos:
            self._place(info, data_start, alignment, cur.size)
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in itertools.pairwise(ordered):
            if a.offset + a.nbytes > b.offset:
                raise GGUFError(f"{self.path}: tensors {a.name!r} (bytes {a.offset} to {a.offset + a.nbytes}) "
                                f"and {b.name!r} (from byte {b.offset}) overlap")

    def _place(self, info: _RawInfo, data_start: int, alignment: int, size: int) -> None:
        """Check one tensor's extent against the data section (Python ints: nothing wraps) and keep it."""
        where = f"{self.path}: tensor {info.name!r} (info at byte {info.at})"
        if info.name in self.tensors:
            raise GGUFError(f"{where}: the name appears twice")
        if info.rel_offset % alignment:
            raise GGUFError(f"{where}: data offset {info.rel_offset} is not a multiple of the alignment "
                            f"{alignment}")
        start = data_start + info.rel_offset
        if start > size or info.nbytes > size - start:
            raise GGUFError(f"{where}: {info.nbytes} bytes at data offset {info.rel_offset} extend past the "
                            f"end of the file ({size} bytes): truncated or corrupt")
        self.tensors[info.name] = TensorInfo(info.name, info.shape, info.ggml_type, start, info.nbytes)

    def _value(self, cur: _Cursor, key: str) -> MetaValue:
        vtype = cur.u32(f"type of {key!r}")
        if vtype not in VALUE_TYPES:
            raise cur.fail(f"metadata key {key!r} has unknown value type {vtype}")
        name, fmt = VALUE_TYPES[vtype]
        if name == "string":
            return MetaValue(cur.string(f"value of {key!r}"), "string")
        if name != "array":
            assert fmt is not None
            value = cur.scalar(fmt, f"value of {key!r}")
            return MetaValue(bool(value) if name == "bool" else value, name)
        etype = cur.u32(f"element type of {key!r}")
        count = cur.u64(f"element count of {key!r}")
        if etype not in VALUE_TYPES:
            raise cur.fail(f"metadata array {key!r} has unknown element type {etype}")
        ename, efmt = VALUE_TYPES[etype]
        if ename == "array":
            raise cur.fail(f"metadata key {key!r} is an array of arrays, which GGUF readers do not support")
        remaining = cur.size - cur.pos
        if ename == "string":
            if count > remaining // 8:
                raise cur.fail(f"metadata array {key!r} claims {count} strings, more than the file holds")
            return MetaValue(self._strings(cur, key, count), "array[string]")
        assert efmt is not None
        width = struct.calcsize(efmt)
        if count > remaining // width:
            raise cur.fail(f"metadata array {key!r} claims {count} x {width} bytes, more than the file holds")
        raw = cur.take(count * width, f"array {key!r}")
        array = np.frombuffer(raw, dtype=_NUMPY[etype])
        return MetaValue(array.astype(bool) if ename == "bool" else array, f"array[{ename}]")

    def _strings(self, cur: _Cursor, key: str, count: int) -> list[str]:
        buf, pos, size = cur.buf, cur.pos, cur.size
        out: list[str] = []
        append = out.append
        unpack = struct.Struct("<Q").unpack_from
        for i in range(count):
            if size - pos < 8:
                cur.pos = pos
                raise cur.fail(f"truncated: string #{i} of array {key!r}")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > size - pos:
                cur.pos = pos
                raise cur.fail(f"string #{i} of array {key!r} claims {n} bytes, more than remain")
            raw = buf[pos:pos + n]
            pos += n
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                append(raw.decode("utf-8", errors="surrogateescape"))
        cur.pos = pos
        return out

    def _tensor_info(self, cur: _Cursor, i: int) -> _RawInfo:
        at = cur.pos
        name = cur.string(f"name of tensor #{i}", MAX_KEY_BYTES)
        label = f"tensor #{i} {name!r}"
        n_dims = cur.u32(f"dimension count of {label}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"{label} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
        dims = [cur.u64(f"dimension {d} of {label}") for d in range(n_dims)]
        n = 1
        for d in dims:
            if d > INT64_MAX:
                raise cur.fail(f"{label} dimension {d} is out of range")
            n *= d  # a Python int: a product that would wrap in 64 bits is seen, not wrapped
            if n > INT64_MAX:
                raise cur.fail(f"{label} shape {dims} has more elements than a 64-bit count holds")
        type_id = cur.u32(f"type of {label}")
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            raise cur.fail(f"{label} has unknown ggml type {type_id}")
        if dims[0] % gtype.block_size:
            raise cur.fail(f"{label} of type {gtype.name} has rows of {dims[0]} elements, not a multiple of "
                           f"its block size {gtype.block_size}")
        offset = cur.u64(f"data offset of {label}")
        nbytes = n // gtype.block_size * gtype.type_size
        return _RawInfo(at, name, tuple(reversed(dims)), gtype, offset, nbytes)

    # --------------------------------------------------------------------------------------- access

    @property
    def architecture(self) -> str | None:
        """general.architecture, or None when absent; a value that cannot be a name is an error, since
        it is matched against spec names and shown in messages."""
        meta = self.metadata.get("general.architecture")
        if meta is None:
            return None
        if meta.type != "string":
            raise GGUFError(f"{self.path}: metadata general.architecture is {meta.type}, must be a string")
        if not _ARCH_NAME.fullmatch(meta.value):
            raise GGUFError(f"{self.path}: metadata general.architecture {meta.value[:64]!r} is not an "
                            "architecture name (letters, digits, '_', '-', '.', up to 64 characters)")
        return str(meta.value)

    def get(self, key: str) -> MetaValue | None:
        return self.metadata.get(key)

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a uint8 array backed by the private map (no copy)."""
        info = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    def close(self) -> None:
        # arrays handed out keep the map alive; the file descriptor itself is no longer needed
        self._file.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
