"""A transformers checkpoint directory seen as a GGUF file: the same metadata keys, tensor names and layout
that llama.cpp's converter would write, computed on demand from config.json and the safetensors shards.

The spec's naming table (tfb.sources.naming) says where each GGUF key and tensor comes from and which of the
converter's transforms apply. Everything downstream (config rules, tensor plan, loader, `tfb check`,
`tfb convert`) then reads a checkpoint exactly as it reads a GGUF file: one spec serves both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfb.errors import ConfigError, WeightError
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.gguf.reader import MetaValue, TensorInfo
from tfb.sources.naming import MetaRule, Table, TensorRule, load_table, read_table, table_dir
from tfb.sources.safetensors_dir import SafetensorsDir, StoredTensor, release_pages
from tfb.spec.registry import all_spec_files, search_dirs

CONFIG = "config.json"
_STORED_AS = {"F32": "F32", "F16": "F16", "BF16": "BF16"}  # other dtypes are widened to F32, as the converter does
_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def spec_chain(spec_file: Path, dirs: Sequence[Path]) -> list[Path]:
    """The spec files from the root base to `spec_file`, following `extends`."""
    import yaml

    from tfb.spec.loader import resolve

    chain = [spec_file]
    while len(chain) < 16:
        data = yaml.safe_load(chain[0].read_text()) or {}
        parent = data.get("extends") if isinstance(data, dict) else None
        if not isinstance(parent, str):
            break
        chain.insert(0, resolve(parent, dirs, skip=chain))
    return chain


def find_table(architectures: list[str], spec_dirs: Sequence[str | Path], where: str) -> tuple[Path, Table]:
    """The spec file and merged naming table that serve a checkpoint's config.json `architectures`."""
    dirs = search_dirs(spec_dirs)
    served: dict[str, Path] = {}
    for spec_file in all_spec_files(dirs).values():
        table = table_dir(spec_file) / spec_file.name
        if table.is_file():
            for arch in read_table(table).get("architectures") or []:
                served.setdefault(str(arch), spec_file)
    for arch in architectures:
        if arch in served:
            chain = spec_chain(served[arch], dirs)
            merged = load_table(chain)
            assert merged is not None
            return served[arch], merged
    raise ConfigError(f"{where}: no spec has a checkpoint naming table for architectures {architectures}; known: "
                      f"{', '.join(sorted(served))}. Add `architectures` to specs/checkpoint/NAME.yaml of the spec "
                      "that runs it, or convert the checkpoint with llama.cpp's convert_hf_to_gguf.py")


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The value of `a.b.c` (key c of object b of object a); a part `{LIST=VALUE}` is the index of the first
    entry of the config list LIST equal to VALUE (per-layer objects keyed by layer: the first full layer's)."""
    node: Any = config
    for part in key.split("."):
        if part.startswith("{") and part.endswith("}") and "=" in part:
            name, wanted = part[1:-1].split("=", 1)
            entries = _lookup(config, name)
            if not isinstance(entries, list) or wanted not in entries:
                return None
            part = str(entries.index(wanted))
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_KINDS = {"uint32": int, "int32": int, "uint64": int, "float32": float, "bool": bool, "string": str}


def _typed(value: Any, rule: MetaRule, where: str) -> MetaValue:
    """A config.json value as a GGUF value of the rule's type, or an error naming the key."""
    kind = rule.type
    if kind.startswith("array["):
        inner = kind[6:-1]
        if not isinstance(value, list):
            raise ConfigError(f"{where} is {_json_type(value)} {value!r:.60}, expected a list of {inner}")
        items = [_typed(v, rule.model_copy(update={"type": inner}), where).value for v in value]
        if inner == "string":
            return MetaValue(items, kind)
        dtype = {"int32": np.int32, "uint32": np.uint32, "float32": np.float32, "bool": np.bool_}[inner]
        return MetaValue(np.asarray(items, dtype=dtype), kind)
    want = _KINDS[kind]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok, value = True, float(np.float32(value))  # as stored: a float32
    if not ok or (kind.startswith("uint") and value < 0):
        expected = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}[want]
        raise ConfigError(f"{where} is {_json_type(value)} {value!r:.60}, expected {expected}")
    return MetaValue(value, kind)


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


class CheckpointSource:
    """A checkpoint directory with GGUFFile's reading interface (metadata, tensors, tensor_data)."""

    def __init__(self, directory: str | Path, spec_dirs: Sequence[str | Path] = (), streaming: bool = False) -> None:
        self.path = Path(directory)
        config_path = self.path / CONFIG
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: a checkpoint directory needs {CONFIG} (and *.safetensors)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{config_path}: cannot read: {e}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{config_path}: not a JSON object")
        self.config = config
        archs = config.get("architectures")
        if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
            raise ConfigError(f"{config_path}: key `architectures` is {archs!r:.60}, expected a list of class names "
                              "(as transformers writes: [\"LlamaForCausalLM\"])")
        self.spec_file, self.table = find_table(archs, spec_dirs, str(config_path))
        self.spec_name = self.spec_file.stem
        self.arch = self.table.gguf_architecture or self._first_match()
        self.metadata: dict[str, MetaValue] = {"general.architecture": MetaValue(self.arch, "string")}
        for key, rule in self.table.metadata.items():
            if rule is not None and rule.token is None:  # token ids wait for the vocabulary
                value = self._meta(key.replace("{arch}", self.arch), rule, config_path)
                if value is not None:
                    self.metadata[key.replace("{arch}", self.arch)] = value
        self.store = SafetensorsDir(self.path, streaming)
        self._rules: dict[str, tuple[TensorRule, list[str], int | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._plan()

    # ----------------------------------------------------------------------------------- metadata

    def _first_match(self) -> str:
        from tfb.spec.loader import load_spec

        spec = load_spec(self.spec_file)
        return spec.match[0] if spec.match else spec.name

    def _meta(self, key: str, rule: MetaRule, config_path: Path) -> MetaValue | None:
        for name, wanted in rule.when.items():
            if _lookup(self.config, name) not in (wanted if isinstance(wanted, list) else [wanted]):
                return None
        if rule.per_layer is not None:
            found = self._per_layer(key, rule, config_path)
            if found is not None:
                return found
        source = self.config if rule.file == CONFIG else self._side_file(rule.file)
        for name in rule.from_:
            value = _lookup(source, name)
            if value is None:
                continue
            where = f"{config_path.with_name(rule.file)}: key `{name}` (for {key})"
            if rule.map is not None:
                if isinstance(value, list) and rule.type.startswith("array["):  # each entry mapped
                    value = [self._mapped(v, rule.map, where) for v in value]
                else:
                    value = self._mapped(value, rule.map, where)
                if value is None:  # a config value the converter writes no key for
                    return None
            return _typed(value, rule, where)
        for op in ("sum", "product", "quotient"):
            operands = getattr(rule, op)
            if operands is not None:
                value = self._evaluate({op: list(operands)})
                if value is None:
                    continue  # a config value it needs is absent: the key is not written
                if rule.type in ("uint32", "int32", "uint64") and isinstance(value, float):
                    value = int(value)  # the converter's int(): a size computed from a fraction
                return _typed(value, rule, f"{config_path}: {op} {list(operands)} (for {key})")
        if rule.value is not None:
            return _typed(rule.value, rule, f"naming table value for {key}")
        return None

    def _side_file(self, name: str) -> dict[str, Any]:
        """Another JSON file of the directory (tokenizer_config.json), empty when absent or not an object."""
        path = self.path / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _mapped(value: Any, table: dict[str, Any], where: str) -> Any:
        if str(value) not in table:
            raise ConfigError(f"{where} is {value!r:.60}; supported: {', '.join(table)}")
        return table[str(value)]

    def _per_layer(self, key: str, rule: MetaRule, config_path: Path) -> MetaValue | None:
        """One value per entry of a config list (see MetaRule.per_layer), or None when an entry has none."""
        assert rule.per_layer is not None
        (name, by_entry), = rule.per_layer.items()
        entries = _lookup(self.config, name)
        if not isinstance(entries, list):
            return None
        values = []
        for entry in entries:
            where = f"{config_path}: key `{name}` (for {key})"
            if str(entry) not in by_entry:
                raise ConfigError(f"{where} has entry {entry!r:.60}; supported: {', '.join(by_entry)}")
            value = next((v for v in map(self._evaluate, by_entry[str(entry)]) if v is not None), None)
            if value is None:
                return None
            values.append(value)
        inner = "float32" if rule.type == "float32" else "int32"  # gguf-py's type for a list of numbers
        return _typed(values, rule.model_copy(update={"type": f"array[{inner}]"}), f"{config_path}: {name} (for {key})")

    def _evaluate(self, operand: Any) -> Any:
        """A number from config.json values: a key, a number, or {sum|product|quotient: [a, b]}; None when a
        key is absent or not a number."""
        if isinstance(operand, bool):
            return None
        if isinstance(operand, (int, float)):
            return operand
        if isinstance(operand, str):
            value = _lookup(self.config, operand)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(operand, dict) and len(operand) == 1:
            (op, pair), = operand.items()
            if isinstance(pair, list) and len(pair) == 2:
                a, b = (self._evaluate(x) for x in pair)
                if a is None or b is None:
                    return None
                if op == "sum":
                    return a + b
                if op == "product":
                    return a * b
                if op == "quotient" and int(b) != 0:
                    return int(a) // int(b)
        raise ConfigError(f"naming table of spec `{self.spec_name}`: {operand!r} is not a config key, a number or "
                          "{sum|product|quotient: [a, b]}")

    def count(self, key: str) -> int:
        """An integer that a tensor rule depends on: a metadata value ({arch} in the key) or a config.json one."""
        if "{arch}" not in key:
            value = _lookup(self.config, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{self.path / CONFIG}: key `{key}` is {value!r:.60}, expected a positive whole "
                                  "number (the checkpoint's tensor layout depends on it)")
            return value
        meta = self.metadata.get(key.replace("{arch}", self.arch))
        if meta is None or not isinstance(meta.value, int):
            raise ConfigError(f"{self.path / CONFIG}: the checkpoint gives no {key.replace('{arch}', self.arch)}, "
                              "which its tensor layout needs")
        return int(meta.value)

    # ------------------------------------------------------------------------------------ tensors

    def _plan(self) -> None:
        layers = self.metadata.get(f"{self.arch}.block_count")
        n_layers = int(layers.value) if layers is not None else 0
        used: set[str] = set()
        for gguf_name, rule in self.table.tensors.items():
            if rule is None or (rule.stack and rule.stack.replace("{arch}", self.arch) not in self.metadata):
                continue  # a stacked tensor without its count: the model has no such experts
            if any(_lookup(self.config, k) != v for k, v in rule.when.items()):
                continue
            computed = rule.wavelength_bands or rule.partial_rotation
            if computed is not None:
                dims = self._first(computed.dims, gguf_name)
                self._rules[gguf_name] = (rule, [], None)
                self.tensors[gguf_name] = TensorInfo(gguf_name, (int(dims) // 2,), GGML_TYPE_BY_NAME["F32"], 0,
                                                     int(dims) // 2 * 4)
                continue
            for i in (range(n_layers) if "{i}" in gguf_name or "{i}" in rule.from_ else [None]):
                name = gguf_name.replace("{i}", str(i))
                source = rule.from_.replace("{i}", str(i))
                sources = [source.replace("{e}", str(e)) for e in range(self.count(rule.stack))] if rule.stack \
                    else [source]
                present = [s for s in sources if s in self.store.tensors]
                if not present:
                    continue
                if len(present) < len(sources):
                    missing = [s for s in sources if s not in self.store.tensors]
                    raise WeightError(f"{self.path}: {name} stacks {len(sources)} experts; the checkpoint lacks "
                                      f"{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
                used.update(sources)
                self._rules[name] = (rule, sources, i)
                self.tensors[name] = self._info(name, rule, [self.store.tensors[s] for s in sources])
        for name, stored in self.store.tensors.items():  # what no rule reads shows as unread, by its own name
            if name not in used and name not in self.tensors:
                gtype = GGML_TYPE_BY_NAME[_STORED_AS.get(stored.dtype, "F32")]
                self.tensors[name] = TensorInfo(name, stored.shape, gtype, 0, stored.nbytes)

    def _info(self, name: str, rule: TensorRule, parts: list[StoredTensor]) -> TensorInfo:
        first = parts[0]
        for p in parts[1:]:
            if p.shape != first.shape or p.dtype != first.dtype:
                raise WeightError(f"{p.shard}: tensor {p.name!r} is {p.dtype} {list(p.shape)}, but {first.name!r} is "
                                  f"{first.dtype} {list(first.shape)}: experts stacked into {name} must agree")
        shape = list(first.shape)
        if rule.transpose:
            shape[-2:] = shape[-1:-3:-1]
        if rule.split is not None:
            shape = self._split_shape(name, rule, shape)
        if rule.stack:
            shape.insert(0, len(parts))
        if rule.permute_rows:
            heads = self.count(rule.permute_rows)
            if not shape or heads <= 0 or shape[0] % (2 * heads):
                raise WeightError(f"{first.shard}: tensor {first.name!r} has {shape[0] if shape else 0} rows, not a "
                                  f"multiple of 2 x {heads} heads ({rule.permute_rows.replace('{arch}', self.arch)})")
        stored = _STORED_AS.get(first.dtype, "F32")
        if rule.add or len(shape) <= 1:
            stored = "F32"  # vectors are float32 in the converter's files
        gtype = GGML_TYPE_BY_NAME[stored]
        return TensorInfo(name, tuple(shape), gtype, 0, math.prod(shape) * gtype.type_size)

    def _sizes(self, rule: TensorRule) -> tuple[int, list[int]]:
        assert rule.split is not None
        sizes = [s if isinstance(s, int) else self.count(s) for s in rule.split.sizes]
        return self.count(rule.split.groups), sizes

    def _split_shape(self, name: str, rule: TensorRule, shape: list[int]) -> list[int]:
        assert rule.split is not None
        groups, sizes = self._sizes(rule)
        if len(shape) < 2 or math.prod(shape[:-1]) != groups * sum(sizes):
            raise WeightError(f"{self.path}: {rule.from_} has shape {shape}, expected {groups} x {sum(sizes)} rows "
                              f"to split into {name}")
        part = sizes[rule.split.part]
        return [groups, shape[-1], part] if rule.split.transpose else [groups, part, shape[-1]]

    def _first(self, operands: list[Any], what: str) -> Any:
        for operand in operands:
            value = self._evaluate(operand)
            if value is not None:
                return value
        raise ConfigError(f"{self.path / CONFIG}: none of {operands} is given, which {what} needs")

    def _wavelength_bands(self, name: str, rule: TensorRule) -> torch.Tensor:
        """See naming.WavelengthBands; computed in float32 step by step as the converter computes it."""
        p = rule.wavelength_bands
        assert p is not None
        base, dims, factor, low, high, context = (self._first(getattr(p, k), name)
                                                  for k in ("base", "dims", "factor", "low", "high", "context"))
        freqs = 1.0 / (base ** (torch.arange(0, int(dims), 2, dtype=torch.float32) / int(dims)))
        low_wavelength, high_wavelength = context / low, context / high
        out: list[Any] = []
        for freq in freqs:
            wavelength = 2 * math.pi / freq
            if wavelength < high_wavelength:
                out.append(1)
            elif wavelength > low_wavelength:
                out.append(factor)
            else:
                smooth = (context / wavelength - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return torch.tensor(out, dtype=torch.float32)

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor as the converter would write it before choosing the output type (torch order)."""
        rule, sources, _ = self._rules[name]
        if rule.wavelength_bands is not None:
            return self._wavelength_bands(name, rule)
        if rule.partial_rotation is not None:
            dims = int(self._first(rule.partial_rotation.dims, name))
            rotated = int(dims * self._first(rule.partial_rotation.fraction, name) / 2)
            return torch.tensor([1.0] * rotated + [1e30] * (dims // 2 - rotated), dtype=torch.float32)
        stored = [self.store.get(s) for s in sources]
        dtype = stored[0].dtype if stored[0].dtype in _TORCH.values() else torch.float32  # others widened
        if rule.stack:
            # one allocation filled expert by expert, each expert's mapped pages dropped once copied: the peak is
            # the stacked tensor and one expert, not twice the experts
            x = torch.empty((len(stored), *stored[0].shape), dtype=dtype)
            for e, part in enumerate(stored):
                x[e].copy_(part)
                release_pages(part)
        else:
            x = stored[0].to(dtype)
        if rule.transpose:
            x = x.transpose(-1, -2).contiguous()
        if rule.split is not None:
            groups, sizes = self._sizes(rule)
            x = x.reshape(groups, sum(sizes), -1).split(sizes, dim=1)[rule.split.part]
            x = x.transpose(1, 2).contiguous() if rule.split.transpose else x.contiguous()
        if rule.permute_rows:
            heads = self.count(rule.permute_rows)
            x = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        if rule.add:
            # the converter adds in the checkpoint's type, widened to float32 unless it is float16
            x = (x if x.dtype != torch.bfloat16 else x.float()) + rule.add
        info = self.tensors[name]
        target = _TORCH.get(info.ggml_type.name, torch.float32)
        x = x.to(target) if x.dtype != target else x
        if not rule.stack and x.untyped_storage().data_ptr() != stored[0].untyped_storage().data_ptr():
            release_pages(stored[0])  # a transformed copy: the stored values are not read again
        return x.reshape(info.shape)

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a uint8 array (a view of the shard's map when no transform applies)."""
        if name not in self._rules:
            raise WeightError(f"{self.path}: tensor {name!r} is read by no rule of the checkpoint naming table")
        x = self.tensor(name).contiguous()
        return x.reshape(-1).view(torch.uint8).numpy()

    def tokenizer_metadata(self, vocab_pre: str | None = None) -> dict[str, MetaValue]:
        """See checkpoint_tokenizer_metadata."""
        from tfb.sources.vocab import tokenizer_metadata

        size = self.config.get("vocab_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ConfigError(f"{self.path / CONFIG}: key `vocab_size` is {size!r:.60}, expected a positive whole "
                              "number")
        meta = tokenizer_metadata(self.path, size, vocab_pre, tuple(self.table.vocab), self.table.merges,
                                  tuple(self.table.user_defined_tokens))
        meta.update({k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")})
        for key, rule in self.table.metadata.items():
            if key.startswith("tokenizer.") and rule is not None and not rule.written:
                meta.pop(key, None)  # a tokenizer key this converter class does not write
        tokens = meta["tokenizer.ggml.tokens"].value
        for key, rule in self.table.metadata.items():
            if rule is not None and rule.token is not None:
                if rule.token not in tokens:
                    raise ConfigError(f"{self.path}: the vocabulary has no token {rule.token!r}, which the naming "
                                      f"table of spec `{self.spec_name}` names for {key}")
                meta[key] = MetaValue(tokens.index(rule.token), "uint32")
        return meta

    # ------------------------------------------------------------------------- GGUFFile's interface

    @property
    def architecture(self) -> str:
        return self.arch

    def get(self, key: str) -> MetaValue | None:
        return self.metadata.get(key)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checkpoint_tokenizer_metadata(directory: Path, vocab_pre: str | None = None) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys of a checkpoint directory: its tokenizer files read as the converter reads them
    (tfb.sources.vocab, in the order of attempts the naming table gives), sized by config.json's vocab_size,
    with the table's own tokenizer keys (the converter's hard-coded ones) on top."""
    with CheckpointSource(directory) as source:
        return source.tokenizer_metadata(vocab_pre)
