"""A GGUF reader for untrusted files.

Every count and length is checked against the bytes that remain before anything is allocated, every
tensor's extent against the data section (with integer overflow ruled out, not wrapped), and every
failure is a `GGUFError` naming the file, the byte offset and the key or tensor. Tensor data stays in a
private memory map: nothing is read until a tensor is asked for.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfb.errors import GGUFError
from tfb.gguf.ggml_types import GGML_TYPES, GGMLType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_KEY_BYTES = 65536
INT64_MAX = 2**63 - 1

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
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            if self.path.stat().st_size == 0:
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
        # each tensor info takes at least 4+8+4+8+8 bytes, each key/value at least 8+1+4+1
        if n_tensors > (cur.size - cur.pos) // 32:
            raise cur.fail(f"claims {n_tensors} tensors, more than the file could describe")
        if n_kv > (cur.size - cur.pos) // 14:
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
            raise cur.fail("truncated: the tensor data section is missing")
        self.data_offset = data_start
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, gtype, rel, nbytes in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: tensor {name!r} appears twice")
            if rel % alignment:
                raise GGUFError(f"{self.path}: tensor {name!r} offset {rel} is not a multiple of the "
                                f"alignment {alignment}")
            start = data_start + rel
            if start > cur.size or nbytes > cur.size - start:
                raise GGUFError(f"{self.path}: tensor {name!r} ({nbytes} bytes at data offset {rel}) "
                                f"extends past the end of the file ({cur.size} bytes): truncated or corrupt")
            self.tensors[name] = TensorInfo(name, shape, gtype, start, nbytes)
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in itertools.pairwise(ordered):
            if a.offset + a.nbytes > b.offset:
                raise GGUFError(f"{self.path}: tensors {a.name!r} and {b.name!r} overlap")

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

    def _tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], GGMLType, int, int]:
        name = cur.string(f"name of tensor #{i}", MAX_KEY_BYTES)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
        dims = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        n = 1
        for d in dims:
            if d > INT64_MAX:
                raise cur.fail(f"tensor {name!r} dimension {d} is out of range")
            n *= d
            if n > INT64_MAX:
                raise cur.fail(f"tensor {name!r} shape {dims} has more elements than a 64-bit count holds")
        type_id = cur.u32(f"type of tensor {name!r}")
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            raise cur.fail(f"tensor {name!r} has unknown ggml type {type_id}")
        if dims[0] % gtype.block_size:
            raise cur.fail(f"tensor {name!r} of type {gtype.name} has rows of {dims[0]} elements, not a "
                           f"multiple of its block size {gtype.block_size}")
        offset = cur.u64(f"offset of tensor {name!r}")
        nbytes = n // gtype.block_size * gtype.type_size
        return name, tuple(reversed(dims)), gtype, offset, nbytes

    # --------------------------------------------------------------------------------------- access

    @property
    def architecture(self) -> str | None:
        meta = self.metadata.get("general.architecture")
        return meta.value if meta is not None and meta.type == "string" else None

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
