"""Spec + metadata (+ tensor names) -> ModelConfig.

Each config field is read with its spec rule: the first metadata key present, else the rule's default
(a literal or a derived value). Values are type- and range-checked, because a hostile or broken file
may put a string, a zero or 10**12 where a head count belongs. A numeric field may be a per-layer array
of `n_layers` values (llama.cpp writes head counts and feed-forward widths so for some families); each
layer's kinds then check their layer's values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from tfb.config import HPARAM_FIELDS, MAX_LAYERS, ModelConfig
from tfb.errors import ConfigError
from tfb.gguf.reader import MetaValue
from tfb.spec.fields import FIELD_BY_NAME, Field
from tfb.spec.schema import Derived, HParam, Spec
from tfb.spec.slots import NoSection, layer_sections
from tfb.spec.suggest import did_you_mean

MAX_SIZE = 2**31 - 1  # every size and count fits an int32, as in llama.cpp
MAX_EXPERTS = 4096
_INT_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


class _Resolver:
    def __init__(self, spec: Spec, metadata: Mapping[str, MetaValue], arch: str, where: str) -> None:
        self.spec, self.metadata, self.arch, self.where = spec, metadata, arch, where
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.per_layer: dict[str, tuple[Any, ...]] = {}

    def rule(self, name: str) -> HParam | None:
        rule = getattr(self.spec.hparams, name)
        return rule if isinstance(rule, HParam) else None

    def get(self, name: str, stack: tuple[str, ...] = ()) -> Any:
        if name in self.values:
            return self.values[name]
        if name in stack:
            raise ConfigError(f"spec {self.spec.name}: derived rules form a cycle: {' -> '.join((*stack, name))}")
        field = FIELD_BY_NAME[name]
        rule = self.rule(name)
        value: Any = None
        for template in rule.keys() if rule else []:
            key = template.replace("{arch}", self.arch)
            if key in self.metadata:
                value = self.coerce(self.metadata[key], field, key)
                self.origin[name] = key
                break
        else:
            if rule is not None and rule.default is not None:
                value = self.derive(rule.default, field, (*stack, name))
                self.origin[name] = "derived" if isinstance(rule.default, Derived) else "spec default"
            elif field.default is not None:
                value = field.default
                self.origin[name] = "default"
            else:
                keys = ", ".join(t.replace("{arch}", self.arch) for t in (rule.keys() if rule else []))
                raise ConfigError(f"{self.where}: metadata key {keys or '(none)'} is missing and spec "
                                  f"`{self.spec.name}` gives no default for `{name}` ({field.doc})")
        if isinstance(value, tuple):  # one value per layer; the field itself holds the largest
            for v in value:
                self.check_range(v, field)
            self.per_layer[name] = value
            value = max(value)
        self.check_range(value, field)
        self.values[name] = value
        return value

    def coerce(self, meta: MetaValue, field: Field, key: str) -> Any:
        value, vtype = meta.value, meta.type
        if meta.is_array and vtype == "array[bool]" and field.kind == "int":  # per-layer flags as 0 and 1
            meta = MetaValue(np.asarray(meta.value, dtype=np.int32), "array[int32]")
            value, vtype = meta.value, meta.type
        if meta.is_array:
            if vtype == "array[string]" or not isinstance(value, np.ndarray) or value.size == 0 \
                    or field.kind not in ("int", "float") or field.name == "n_layers":
                raise ConfigError(f"{self.where}: metadata {key} is {vtype}, expected one {field.kind}")
            if (value == value.flat[0]).all() and value.ndim == 1:
                return self.coerce(MetaValue(value.flat[0].item(), vtype[6:-1]), field, key)
            layers = self.get("n_layers")
            if value.ndim == 1 and layers < len(value) == self.get("block_count"):
                # one value per block of the file, which holds blocks the model does not run after its
                # n_layers (next-token prediction): those values are theirs
                value = value[:layers]
            if value.ndim != 1 or len(value) != layers:
                raise ConfigError(f"{self.where}: metadata {key} has {value.size} values, expected one per layer: "
                                  f"block_count = {layers} (or a single value for all layers)")
            return tuple(self.coerce(MetaValue(v.item(), vtype[6:-1]), field, key) for v in value)
        problem = None
        if field.kind == "int":
            problem = None if vtype in _INT_TYPES else "an integer"
        elif field.kind == "float":
            problem = None if vtype in (*_INT_TYPES, "float32", "float64") else "a number"
            value = float(value) if problem is None else value
        elif field.kind == "bool":
            problem = None if vtype == "bool" else "a bool"
        elif field.kind == "str":
            problem = None if vtype == "string" else "a string"
        if problem:
            raise ConfigError(f"{self.where}: metadata {key} is {vtype} {_show(value)}, expected {problem} "
                              f"for `{field.name}` ({field.doc})")
        if field.choices and value not in field.choices:
            raise ConfigError(f"{self.where}: metadata {key} = {value!r} is not supported for `{field.name}`"
                              f"{did_you_mean(value, field.choices)}; supported: {', '.join(field.choices)}")
        return value

    def derive(self, rule: Any, field: Field, stack: tuple[str, ...]) -> Any:
        if not isinstance(rule, Derived):
            return float(rule) if field.kind == "float" and not isinstance(rule, bool) else rule
        value = self.evaluate(rule, field, stack)
        if isinstance(value, tuple):  # a per-layer pattern (zero_every)
            return tuple(self.of_kind(v, field) for v in value)
        return self.of_kind(value, field)

    def of_kind(self, value: Any, field: Field) -> Any:
        """A derived value as its field's kind: a rule may compute a float (a square root, a quotient)
        for an integer field, and the modules need whole numbers there."""
        if field.kind == "int" and isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        if field.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        expected = {"int": int, "float": float, "bool": bool, "str": str}[field.kind]
        if type(value) is not expected:
            kind = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}[field.kind]
            raise ConfigError(f"{self.where}: `{field.name}` derives {_show(value)}, not {kind} "
                              f"({field.doc}); the file must give `{field.name}` or consistent values")
        return value

    def evaluate(self, rule: str | float | Derived, field: Field, stack: tuple[str, ...]) -> Any:
        """The value of an operand: a field, a number or a (nested) derived rule."""
        if isinstance(rule, str):
            return self.get(rule, stack)
        if not isinstance(rule, Derived):
            return rule
        if rule.length_of is not None:
            key = rule.length_of.replace("{arch}", self.arch)
            meta = self.metadata.get(key)
            if meta is None or not meta.is_array:
                raise ConfigError(f"{self.where}: `{field.name}` needs array {key} for its length, "
                                  "and the file has none")
            return len(meta.value)
        if rule.field is not None:
            return self.get(rule.field, stack)
        if rule.zero_every is not None:
            step = self.evaluate(rule.zero_every, field, stack)
            if not isinstance(step, int) or step <= 0:
                raise ConfigError(f"{self.where}: `{field.name}` repeats every {rule.zero_every} = {step} layers, "
                                  "which must be a positive whole number")
            return tuple(0 if (i + 1) % step == 0 else 1 for i in range(self.get("n_layers", stack)))
        if rule.cases is not None:
            for case in rule.cases:
                if all(self.get(name, stack) == want for name, want in case.when.items()):
                    return self.evaluate(case.value, field, stack)
            assert rule.otherwise is not None
            return self.evaluate(rule.otherwise, field, stack)
        if rule.sqrt is not None or rule.inverse_sqrt is not None:
            x = float(self.evaluate(rule.sqrt if rule.sqrt is not None else rule.inverse_sqrt,  # type: ignore[arg-type]
                                    field, stack))
            if not x > 0 or not math.isfinite(x):
                raise ConfigError(f"{self.where}: `{field.name}` takes the square root of {x}")
            return math.sqrt(x) if rule.sqrt is not None else 1.0 / math.sqrt(x)
        if rule.product is not None:
            a, b = (self.evaluate(x, field, stack) for x in rule.product)
            return a * b if isinstance(a, int) and isinstance(b, int) else float(a) * float(b)
        if rule.difference is not None:
            a, b = (self.evaluate(x, field, stack) for x in rule.difference)
            return a - b if isinstance(a, int) and isinstance(b, int) else float(a) - float(b)
        assert rule.quotient is not None
        a, b = (self.evaluate(x, field, stack) for x in rule.quotient)
        names = " / ".join(x if isinstance(x, str) else str(x) for x in rule.quotient)
        if b == 0:
            divisor = rule.quotient[1]
            origin = f" ({divisor} = 0 from {self.origin.get(divisor)})" if isinstance(divisor, str) else ""
            raise ConfigError(f"{self.where}: `{field.name}` = {names} divides by zero{origin}")
        if isinstance(a, int) and isinstance(b, int):
            if a % b == 0:
                return a // b
            if field.kind == "int":
                raise ConfigError(f"{self.where}: `{field.name}` = {names} = {a} / {b} is not a whole number; the "
                                  f"file must give `{field.name}` or consistent sizes")
        return a / b

    def check_range(self, value: Any, field: Field) -> None:
        if field.kind in ("int", "float") and not isinstance(value, bool):
            bad = (field.range == "positive" and not value > 0) or (field.range == "nonnegative" and not value >= 0)
            if bad or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{self.where}: `{field.name}` = {value} ({self.origin.get(field.name)}) "
                                  f"must be {field.range} and finite ({field.doc})")
            if field.kind == "int" and value > MAX_SIZE:
                raise ConfigError(f"{self.where}: `{field.name}` = {value} ({self.origin.get(field.name)}) is "
                                  f"beyond any real model (at most {MAX_SIZE})")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def build_config(spec: Spec, metadata: Mapping[str, MetaValue], tensor_names: Collection[str], *,
                 arch: str, where: str, context_length: int | None = None) -> ModelConfig:
    """The model configuration for a file, or a ConfigError that names the key and the fix."""
    resolver = _Resolver(spec, metadata, arch, where)
    values = {name: resolver.get(name) for name in FIELD_BY_NAME}
    n_layers = values["n_layers"]
    if n_layers > MAX_LAYERS:
        raise ConfigError(f"{where}: n_layers = {n_layers} is more than {MAX_LAYERS}")
    templates = spec.tensors.layer.model_dump(exclude_none=True)  # type: ignore[attr-defined]  # slot -> {"name": template, ...}
    present = set(tensor_names)

    def has(slot: str) -> bool:
        """Some layer of the file has this slot's tensor."""
        template = templates.get(slot, {}).get("name")
        return template is not None and any(template.replace("{i}", str(i)) in present for i in range(n_layers))

    facts: dict[str, bool] = {}
    for section in spec.sections():
        for name, value in section.file_facts(has).items():
            facts[name] = facts.get(name, False) or value
    parallel = spec.block.residual == "parallel" or (spec.block.residual == "auto" and not has("ffn_norm"))
    if context_length is not None and not 0 < context_length <= MAX_SIZE:
        raise ConfigError(f"context_length={context_length} must be a positive number of tokens")
    own = {name: v for name, v in values.items() if name in MODEL_FIELDS}
    extra = {name: v for name, v in values.items() if name not in MODEL_FIELDS}
    config = ModelConfig(architecture=arch, parallel_residual=parallel, fused_qkv=facts.get("fused_qkv", False),
                         fused_qkvz=facts.get("fused_qkvz", False), qk_norm=facts.get("qk_norm", False),
                         run_context_length=context_length or values["context_length"], **own, extra=extra,
                         per_layer=resolver.per_layer)
    check_config(config, spec, where, resolver.origin)
    return config


MODEL_FIELDS = {f.name for f in HPARAM_FIELDS}


def check_config(c: ModelConfig, spec: Spec, where: str, origin: Mapping[str, str] | None = None) -> None:
    """Each layer's values, by the kinds that layer uses; a refusal names the metadata keys of the fields it
    quotes (`origin`: field -> key)."""
    if c.expert_count > MAX_EXPERTS:
        raise ConfigError(f"{where}: expert_count = {c.expert_count} is more than {MAX_EXPERTS}")
    checked: set[tuple[int, int, int]] = set()
    for i in range(c.n_layers):
        try:
            mixer, ffn = layer_sections(spec, c, i)
        except NoSection as e:
            raise ConfigError(f"{where}: no {e.role} section of spec `{spec.name}` covers layer {i} (their "
                              f"layers: {'; '.join(e.selectors)}); end the {e.role} list with a section for the "
                              "other layers (`layers: all`, the default)") from None
        layer = c.layer(i)
        key = (id(mixer), id(ffn), id(layer))  # layers alike in kinds and values are checked once
        if key in checked:
            continue
        checked.add(key)
        for section in (mixer, ffn):
            problem = section.check(layer)
            if problem:
                at = f" in layer {i} ({section.kind})" if c.per_layer or len(spec.mixer) + len(spec.ffn) > 2 else ""
                keys = [f"{name} from {origin[name]}" for name in dict.fromkeys(re.findall(r"`(\w+)`", problem))
                        if origin and "." in origin.get(name, "")]
                raise ConfigError(f"{where}: {problem}{at}" + (f" ({'; '.join(keys)})" if keys else ""))
