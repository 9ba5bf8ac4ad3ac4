"""A transformers checkpoint directory seen as a GGUF file: the same metadata keys, tensor names and layout
that llama.cpp's converter would write, computed on demand from config.json and the safetensors shards.

The spec's naming table (tfb.sources.naming) says where each GGUF key and tensor comes from and which of the
converter's transforms apply. Everything downstream (config rules, tensor plan, loader, `tfb check`,
`tfb convert`) then reads a checkpoint exactly as it reads a GGUF file: one spec serves both.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfb.errors import ConfigError, WeightError
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.gguf.reader import MetaValue, TensorInfo
from tfb.sources.naming import MetaRule, PerLayer, ScaleRows, Table, TensorRule, load_table, read_table, table_dir
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


def _first_key(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first key present (null included), as the converter's find_hparam."""
    return next((config[k] for k in keys if k in config), None)


def _with_rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with `rope_parameters` as the converter sees them (TextModel.__init__): transformers 5's
    `rope_parameters`, else the older `rope_scaling`, with the top-level rope settings of older configs mirrored
    in (base, local base, `type` as `rope_type`, rotary fraction, original context) unless set per attention
    type. Tables read `rope_parameters.*` whichever way the checkpoint writes them."""
    given = config.get("rope_parameters", config.get("rope_scaling"))
    rope = dict(given) if isinstance(given, dict) else {}
    if "full_attention" not in rope and "sliding_attention" not in rope:
        local = _first_key(config, ("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                                    "rope_local_base_freq"))
        if local is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        mirrored = {"rope_theta": _first_key(config, ("global_rope_theta", "rope_global_theta", "rope_theta_global",
                                                      "rope_theta", "rotary_emb_base")),
                    "rope_type": rope.get("type"),
                    "partial_rotary_factor": _first_key(config, ("partial_rotary_factor", "rope_pct", "rope_percent")),
                    "original_max_position_embeddings": config.get("original_max_position_embeddings")}
        rope.update({k: v for k, v in mirrored.items() if k not in rope and v is not None})
    return {**config, "rope_parameters": rope}


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The value of `a.b.c` (key c of object b of object a); a part `{LIST=VALUE}` is the index of the first
    entry of the config list LIST equal to VALUE (per-layer objects keyed by layer: the first full layer's)."""
    node: Any = config
    for part in key.split("."):
        if part.startswith("{") and part.endswith("}") and "=" in part:  # `{LIST=VALUE}`: that entry's index
            name, wanted = part[1:-1].split("=", 1)
            entries = _lookup(config, name)
            if not isinstance(entries, list) or wanted not in entries:
                return None
            part = str(entries.index(wanted))
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # `a.0`: item 0 of list a
        elif not isinstance(node, dict) or part not in node:
            return None
        else:
            node = node[part]
    return node


def _has(config: dict[str, Any], key: str) -> bool:
    """Whether config.json gives `key` (`a.b`: key b of object a), null or not."""
    parent, _, last = key.rpartition(".")
    node = _lookup(config, parent) if parent else config
    return isinstance(node, dict) and last in node


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


def _mapped(value: Any, table: dict[str, Any], where: str) -> Any:
    if str(value) not in table:
        raise ConfigError(f"{where} is {value!r:.60}; supported: {', '.join(table)}")
    return table[str(value)]


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _arithmetic(rule: TensorRule) -> bool:
    """Whether a rule computes new values (not only moves them)."""
    return rule.negative_exp or bool(rule.scale) or rule.scale_rows is not None


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
        # a multimodal checkpoint's language model settings, read as top-level keys (as the converter reads them)
        text = config.get("text_config")
        self.config = _with_rope_parameters({**config, **text} if isinstance(text, dict) else config)
        quantized = config.get("quantization_config")
        if quantized is not None:  # its weights need the quantization's own scales and layouts, which no table reads
            method = quantized.get("quant_method") if isinstance(quantized, dict) else quantized
            raise ConfigError(f"{config_path}: key `quantization_config` (quant_method {method!r:.40}): quantized "
                              "checkpoints are not read; convert it with llama.cpp's convert_hf_to_gguf.py, or use "
                              "an unquantized (float) checkpoint")
        archs = config.get("architectures")
        if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
            raise ConfigError(f"{config_path}: key `architectures` is {archs!r:.60}, expected a list of class names "
                              "(as transformers writes: [\"LlamaForCausalLM\"])")
        self.spec_file, self.table = find_table(archs, spec_dirs, str(config_path))
        self.spec_name = self.spec_file.stem
        chosen = [arch for arch, keys in self.table.architecture_if.items() if all(_has(config, k) for k in keys)]
        self.arch = (chosen[0] if chosen else None) or self.table.gguf_architecture or self._first_match()
        self.store = SafetensorsDir(self.path, streaming)
        self.metadata: dict[str, MetaValue] = {"general.architecture": MetaValue(self.arch, "string")}
        for key, rule in self.table.metadata.items():
            if rule is not None and rule.token is None:  # token ids wait for the vocabulary
                value = self._meta(key.replace("{arch}", self.arch), rule, config_path)
                if value is not None:
                    self.metadata[key.replace("{arch}", self.arch)] = value
        self._rules: dict[str, tuple[TensorRule, list[str], int | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._stored: dict[str, str] = {}  # a tensor's name as the rules read it -> its name in the shards
        self._skipped: set[str] = set()  # tensors the converter leaves out (the table's skip)
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
        if not all(_has(self.config, k) for k in rule.needs):
            return None
        if any(not self._evaluate(operand) for operand in rule.nonzero):
            return None
        for name, wanted in rule.when_all.items():
            items = _lookup(self.config, name)
            if not isinstance(items, list) or any(v != wanted for v in items):
                return None
        for case in rule.cases:
            if "type" not in case.model_fields_set:  # a case writes its parent's type unless it says otherwise
                case = case.model_copy(update={"type": rule.type})
            chosen = self._meta(key, case, config_path)
            if chosen is not None:
                return chosen
        if rule.per_layer is not None:
            values = self._per_layer(rule.per_layer, key, config_path)
            if values is not None:
                return _typed(values, rule, f"{config_path}: per-layer {key}")
        source = self.config if rule.file == CONFIG else self._side_file(rule.file)
        for name in rule.from_:
            value = _lookup(source, name)
            if value is None:
                continue
            where = f"{config_path.with_name(rule.file)}: key `{name}` (for {key})"
            if rule.map is not None and rule.type.startswith("array[") and isinstance(value, list):
                value = [_mapped(v, rule.map, where) for v in value]
            elif rule.map is not None:
                value = _mapped(value, rule.map, where)
                if value is None:  # a config value the converter writes no key for
                    return None
            if rule.pad_to is not None and isinstance(value, list):
                length, zero = self._number(rule.pad_to, key), False if rule.type == "array[bool]" else 0
                value = (list(value) + [zero] * length)[:length]
            return _typed(value, rule, where)
        for op in ("sum", "product", "quotient", "sqrt"):
            operands = getattr(rule, op)
            if operands is not None:
                value = self._evaluate({op: operands if op == "sqrt" else list(operands)})
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

    def _per_layer(self, rule: PerLayer, key: str, config_path: Path) -> list[Any] | None:
        """See naming.PerLayer; None where a layer's operand is not given (the rule's other fields, or the next
        case, give the value)."""
        for name in rule.types:
            types = _lookup(self.config, name)
            if types is None:
                continue
            if not isinstance(types, (list, str)):
                raise ConfigError(f"{config_path}: key `{name}` (for {key}) is {_json_type(types)} {types!r:.60}, "
                                  "expected a list of layer types or a string of one letter per layer")
            out = []
            for kind in types:
                chosen = kind in rule.where if rule.where is not None else kind not in (rule.where_not or [])
                operand = rule.value if chosen else rule.otherwise
                value = self._evaluate(operand)
                if value is None:
                    return None
                out.append(value)
            if rule.append is not None:
                count, value = self._evaluate(rule.append.count), self._evaluate(rule.append.value)
                if count is None or value is None:
                    raise ConfigError(f"{config_path}: {rule.append} (for {key}) is not given")
                out += [value] * int(count)
            return out
        raise ConfigError(f"{config_path}: gives none of {', '.join(rule.types)}, the layer types {key} is made from "
                          "(one per layer); a checkpoint that lists its layers otherwise is not one this table reads: "
                          "convert it with llama.cpp's convert_hf_to_gguf.py")

    def _evaluate(self, operand: Any) -> Any:
        """A number from config.json values: a key, a metadata key already computed ({arch}), a number,
        {sum|product|quotient|ratio|max: [a, b]}, {sqrt|log: a}, {length: key} (of a config list or string),
        {layers_of: PREFIX} (1 + the largest j of the checkpoint's tensor names starting with PREFIX, `{j}` a number;
        0 if none), or a list of these (the first present); None when a key is absent or not a number."""
        if isinstance(operand, bool):
            return None
        if isinstance(operand, (int, float)):
            return operand
        if isinstance(operand, list):  # the first operand present
            return next((v for v in map(self._evaluate, operand) if v is not None), None)
        if isinstance(operand, str) and "{arch}" in operand:
            meta = self.metadata.get(operand.replace("{arch}", self.arch))
            return meta.value if meta is not None and isinstance(meta.value, (int, float)) else None
        if isinstance(operand, str):
            value = _lookup(self.config, operand)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(operand, list):  # alternatives: the first present (a default last)
            return next((v for v in map(self._evaluate, operand) if v is not None), None)
        if isinstance(operand, dict) and len(operand) == 1:
            (op, pair), = operand.items()
            if op == "length" and isinstance(pair, str):
                items = _lookup(self.config, pair)
                return len(items) if isinstance(items, (list, str)) else None
            if op in ("sqrt", "log") and not isinstance(pair, list):
                x = self._evaluate(pair)
                if x is None:
                    return None
                if x > 0 or (op == "sqrt" and x == 0):
                    return math.sqrt(x) if op == "sqrt" else math.log(x)
                raise ConfigError(f"naming table of spec `{self.spec_name}`: {op} of {x} ({pair!r})")
            if op == "layers_of" and isinstance(pair, str):  # the checkpoint's layers under a prefix: max j + 1
                pattern = re.compile(re.escape(pair).replace(r"\{j\}", r"(\d+)"))
                found = [int(m.group(1)) for m in map(pattern.match, self.store.tensors) if m and m.groups()]
                return max(found) + 1 if found else 0
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
                if op == "ratio" and b != 0:
                    return a / b
                if op == "max":
                    return max(a, b)
        raise ConfigError(f"naming table of spec `{self.spec_name}`: {operand!r} is not a config key, a number, "
                          "{sum|product|quotient|ratio|max: [a, b]}, {sqrt|log: a}, {length: key}, "
                          "{layers_of: PREFIX} or a list of alternatives")

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

    def _renamed(self) -> dict[str, str]:
        """Each checkpoint tensor's name as the table's rules read it (the table's renames) -> its stored name."""
        out: dict[str, str] = {}
        patterns = [(re.compile(re.escape(prefix).replace(r"\{j\}", r"(\d+)")), rename)
                    for prefix, rename in self.table.renames.items()
                    if all(_has(self.config, k) for k in rename.needs)]
        for stored in self.store.tensors:
            if any(fnmatch.fnmatchcase(stored, pattern) for pattern in self.table.skip):
                self._skipped.add(stored)
                continue
            name = stored
            for pattern, rename in patterns:
                m = pattern.match(name)
                if m is not None:
                    j = int(m.group(1)) if m.groups() else 0
                    name = rename.to.replace("{j}", str(j + self._number(rename.offset, rename.to))) + name[m.end():]
            out.setdefault(name, stored)
        return out

    def _plan(self) -> None:
        layers = self.metadata.get(f"{self.arch}.block_count")
        n_layers = int(layers.value) if layers is not None else 0
        self._stored = self._renamed()
        used: set[str] = set()
        for gguf_name, rule in self.table.tensors.items():
            if rule is None or (rule.stack and rule.stack.replace("{arch}", self.arch) not in self.metadata):
                continue  # a stacked tensor without its count: the model has no such experts
            if any(_lookup(self.config, k) != v for k, v in rule.when.items()):
                continue
            if rule.values is not None:
                values = _lookup(self.config, rule.values)
                if values is None:
                    continue
                if not (isinstance(values, list) and values and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                    raise ConfigError(f"{self.path / CONFIG}: key `{rule.values}` is {values!r:.60}, expected a "
                                      f"list of numbers (for {gguf_name})")
                self._rules[gguf_name] = (rule, [], None)
                self.tensors[gguf_name] = TensorInfo(gguf_name, (len(values),), GGML_TYPE_BY_NAME["F32"], 0,
                                                     len(values) * 4)
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
                present = [s for s in sources if s in self._stored]
                if not present:
                    continue
                if len(present) < len(sources):
                    missing = [s for s in sources if s not in self._stored]
                    raise WeightError(f"{self.path}: {name} stacks {len(sources)} experts; the checkpoint lacks "
                                      f"{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
                used.update(self._stored[s] for s in sources)
                self._rules[name] = (rule, sources, i)
                self.tensors[name] = self._info(name, rule, [self.store.tensors[self._stored[s]] for s in sources])
        for name, stored in self.store.tensors.items():  # what no rule reads shows as unread, by its own name
            if name not in used and name not in self.tensors and name not in self._skipped:
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
        if rule.strided is not None:
            step, dim = rule.strided.step, rule.strided.dim
            if not -len(shape) <= dim < len(shape) or shape[dim] % step or rule.strided.start >= step:
                raise WeightError(f"{first.shard}: tensor {first.name!r} of shape {list(shape)} cannot be taken every "
                                  f"{step} from {rule.strided.start} along dimension {dim} (for {name})")
            shape[dim] //= step
        if rule.split is not None:
            shape = self._split_shape(name, rule, shape)
        if rule.stack:
            shape.insert(0, len(parts))
        shape = self._reshaped(first, rule, shape)
        if rule.permute_rows:
            heads = self.count(rule.permute_rows)
            if not shape or heads <= 0 or shape[0] % (2 * heads):
                raise WeightError(f"{first.shard}: tensor {first.name!r} has {shape[0] if shape else 0} rows, not a "
                                  f"multiple of 2 x {heads} heads ({rule.permute_rows.replace('{arch}', self.arch)})")
        if rule.deinterleave is not None:
            groups, sizes = self._deinterleave_sizes(rule)
            if len(shape) != 2 or shape[0] != groups * sum(sizes):
                raise WeightError(f"{first.shard}: tensor {first.name!r} has shape {shape}, expected {groups} x "
                                  f"{sum(sizes)} rows to deinterleave into {name}")
            shape = [groups * sum(sizes[p] for p in rule.deinterleave.parts), shape[1]]
        if rule.tile_heads is not None:
            skip, groups, per_group, size = self._tile_sizes(rule)
            dim = rule.tile_heads.dim
            if len(shape) <= dim or shape[dim] != skip + groups * per_group * size:
                raise WeightError(f"{first.shard}: tensor {first.name!r} has shape {shape}, expected {skip} + {groups} "
                                  f"x {per_group} x {size} along dimension {dim} to reorder into {name}")
        stored = _STORED_AS.get(first.dtype, "F32")
        if rule.add or rule.negative_exp or len(shape) <= 1:
            stored = "F32"  # vectors are float32 in the converter's files
        elif stored == "BF16" and _arithmetic(rule):
            stored = "F32"  # the converter computes on bfloat16 widened to float32
        gtype = GGML_TYPE_BY_NAME[stored]
        return TensorInfo(name, tuple(shape), gtype, 0, math.prod(shape) * gtype.type_size)

    def _reshaped(self, first: StoredTensor, rule: TensorRule, shape: list[int]) -> list[int]:
        """The shape after `squeeze` and `reshape`."""
        if rule.squeeze:
            shape = [n for n in shape if n != 1]
        if rule.reshape is not None:
            dims = [-1 if d == -1 else int(self._first([d], f"the reshape of {first.name}")) for d in rule.reshape]
            known = math.prod(d for d in dims if d != -1)
            total = math.prod(shape)
            if dims.count(-1) > 1 or known <= 0 or total % known or (-1 not in dims and known != total):
                raise WeightError(f"{first.shard}: tensor {first.name!r} has shape {shape}, which does not reshape to "
                                  f"{rule.reshape} ({dims})")
            shape = [total // known if d == -1 else d for d in dims]
        return shape

    def _sizes(self, rule: TensorRule) -> tuple[int, list[int]]:
        assert rule.split is not None
        sizes = [s if isinstance(s, int) else self.count(s) for s in rule.split.sizes]
        groups = rule.split.groups
        if groups is None:
            return 1, sizes
        return groups if isinstance(groups, int) else self.count(groups), sizes

    def _number(self, operand: Any, what: str) -> int:
        """A whole number a tensor rule gives: a metadata key ({arch}), or a config key, number or arithmetic."""
        value = self.count(operand) if isinstance(operand, str) and "{arch}" in operand else self._evaluate(operand)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{self.path / CONFIG}: {operand!r} is {value!r:.60}, expected a whole number (the "
                              f"layout of {what} depends on it)")
        return value

    def _deinterleave_sizes(self, rule: TensorRule) -> tuple[int, list[int]]:
        d = rule.deinterleave
        assert d is not None
        return self._number(d.groups, rule.from_), [self._number(s, rule.from_) for s in d.sizes]

    def _tile_sizes(self, rule: TensorRule) -> tuple[int, int, int, int]:
        t = rule.tile_heads
        assert t is not None
        skip, groups, per_group, size = (self._number(x, rule.from_) for x in (t.skip, t.groups, t.per_group, t.size))
        return skip, groups, per_group, size

    def _split_shape(self, name: str, rule: TensorRule, shape: list[int]) -> list[int]:
        assert rule.split is not None
        groups, sizes = self._sizes(rule)
        if len(shape) < 2 or math.prod(shape[:-1]) != groups * sum(sizes):
            raise WeightError(f"{self.path}: {rule.from_} has shape {shape}, expected {groups} x {sum(sizes)} rows "
                              f"to split into {name}")
        part = sizes[rule.split.part]
        cut = [groups, shape[-1], part] if rule.split.transpose else [groups, part, shape[-1]]
        return cut if rule.split.groups is not None else cut[1:]

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
        if rule.values is not None:
            return torch.tensor(_lookup(self.config, rule.values), dtype=torch.float32)
        if rule.partial_rotation is not None:
            dims = int(self._first(rule.partial_rotation.dims, name))
            rotated = int(dims * self._first(rule.partial_rotation.fraction, name) / 2)
            return torch.tensor([1.0] * rotated + [1e30] * (dims // 2 - rotated), dtype=torch.float32)
        stored = [self.store.get(self._stored[s]) for s in sources]
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
        if rule.strided is not None:
            kept = torch.arange(rule.strided.start, x.shape[rule.strided.dim], rule.strided.step)
            x = x.index_select(rule.strided.dim, kept)
        if rule.split is not None:
            groups, sizes = self._sizes(rule)
            x = x.reshape(groups, sum(sizes), -1).split(sizes, dim=1)[rule.split.part]
            x = x.transpose(1, 2).contiguous() if rule.split.transpose else x.contiguous()
        if rule.permute_rows:
            heads = self.count(rule.permute_rows)
            x = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        if rule.squeeze:
            x = x.squeeze()
        if rule.deinterleave is not None:
            groups, sizes = self._deinterleave_sizes(rule)
            cut = x.reshape(groups, sum(sizes), -1).split(sizes, dim=1)
            x = torch.cat([cut[p].reshape(-1, x.shape[-1]) for p in rule.deinterleave.parts])
        if rule.tile_heads is not None:
            skip, groups, per_group, size = self._tile_sizes(rule)
            dim = rule.tile_heads.dim
            kept, heads = x.split([skip, x.shape[dim] - skip], dim=dim)
            grouped = heads.reshape(*x.shape[:dim], groups, per_group, size, *x.shape[dim + 1:])
            x = torch.cat([kept, grouped.transpose(dim, dim + 1).reshape(heads.shape)], dim=dim)
        if x.dtype == torch.bfloat16 and _arithmetic(rule):
            x = x.float()  # as the converter, which widens bfloat16 before its transforms
        if rule.negative_exp:
            x = -torch.exp(x)
        for operand in rule.scale:
            x = x * self._first([operand], f"the scale of {name}")
        if rule.scale_rows is not None:
            x = self._scale_rows(name, rule.scale_rows, x)
        if rule.add:
            x = (x if x.dtype != torch.bfloat16 else x.float()) + rule.add
        info = self.tensors[name]
        target = _TORCH.get(info.ggml_type.name, torch.float32)
        x = x.to(target) if x.dtype != target else x
        if not rule.stack and x.untyped_storage().data_ptr() != stored[0].untyped_storage().data_ptr():
            release_pages(stored[0])  # a transformed copy: the stored values are not read again
        return x.reshape(info.shape)

    def _scale_rows(self, name: str, bands: ScaleRows, x: torch.Tensor) -> torch.Tensor:
        """Each band of rows multiplied by its factor (the last band: the rows left)."""
        rows = [int(self._first([r], f"the row bands of {name}")) for r in bands.rows]
        if len(bands.factors) != len(rows) + 1 or sum(rows) > x.shape[0]:
            raise WeightError(f"{self.path}: {name} has {x.shape[0]} rows, which the bands {rows} with factors "
                              f"{bands.factors} do not cut")
        x = x.clone()
        start = 0
        for count, factor in zip([*rows, x.shape[0] - sum(rows)], bands.factors, strict=True):
            x[start:start + count] *= self._first([factor], f"the row bands of {name}")
            start += count
        return x

    def stored_block(self, name: str) -> int | None:
        """The first number in the name of the checkpoint tensor that `name` is read from (None: no number)."""
        _, sources, _ = self._rules[name]
        stored = self._stored[sources[0]] if sources else ""
        return next((int(part) for part in stored.split(".") if part.isdecimal()), None)

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
        if self.table.vocab_size is not None and size is not None:
            size = int(self._first([self.table.vocab_size], "the vocabulary size"))  # the converter's padding
        meta = tokenizer_metadata(self.path, size, vocab_pre, tuple(self.table.vocab), self.table.merges,
                                  tuple(self.table.user_defined_tokens))
        meta.update({k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")})
        for key, rule in self.table.metadata.items():
            if key.startswith("tokenizer.") and rule is not None and not rule.written:
                meta.pop(key, None)  # a tokenizer key this converter class does not write
        tokens = meta["tokenizer.ggml.tokens"].value
        for key, rule in self.table.metadata.items():
            # set as gguf-py's SpecialVocab._set_special_token sets it: an id the tokenizer files give stays
            if rule is not None and rule.token is not None and key not in meta:
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
