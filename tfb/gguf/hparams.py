"""Spec + GGUF metadata (+ tensor names) -> ModelConfig.

Each config field is read with its spec rule: the first metadata key present, else the rule's default
(a literal or a derived value). Values are type- and range-checked, because a hostile or broken file
may put a string, a zero or 10**12 where a head count belongs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from tfb.config import ModelConfig
from tfb.errors import ConfigError
from tfb.gguf.reader import MetaValue
from tfb.spec.fields import FIELD_BY_NAME, Field
from tfb.spec.schema import Derived, HParam, Spec
from tfb.spec.suggest import did_you_mean

MAX_SIZE = 2**31 - 1  # every size and count fits an int32, as in llama.cpp
MAX_LAYERS = 4096
MAX_EXPERTS = 4096
_INT_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


class _Resolver:
    def __init__(self, spec: Spec, metadata: Mapping[str, MetaValue], arch: str, where: str) -> None:
        self.spec, self.metadata, self.arch, self.where = spec, metadata, arch, where
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

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
        self.check_range(value, field)
        self.values[name] = value
        return value

    def coerce(self, meta: MetaValue, field: Field, key: str) -> Any:
        value, vtype = meta.value, meta.type
        if meta.is_array:
            if vtype == "array[string]" or not isinstance(value, np.ndarray) or value.size == 0:
                raise ConfigError(f"{self.where}: metadata {key} is {vtype}, expected one {field.kind}")
            if not (value == value.flat[0]).all():
                raise ConfigError(f"{self.where}: metadata {key} holds different values per layer; tfb "
                                  f"reads one `{field.name}` for all layers")
            vtype = vtype[6:-1]
            value = value.flat[0].item()
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
        return self.of_kind(self.evaluate(rule, field, stack), field)

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
        assert rule.quotient is not None
        a, b = (self.evaluate(x, field, stack) for x in rule.quotient)
        names = " / ".join(x if isinstance(x, str) else str(x) for x in rule.quotient)
        if b == 0:
            raise ConfigError(f"{self.where}: `{field.name}` = {names} divides by zero")
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
    qkv_template = spec.tensors.layer.attn_qkv  # type: ignore[attr-defined]
    fused = spec.attention.qkv == "fused" or (
        spec.attention.qkv == "auto" and qkv_template is not None
        and qkv_template.name.replace("{i}", "0") in tensor_names)
    ffn_norm = spec.tensors.layer.ffn_norm  # type: ignore[attr-defined]
    parallel = spec.block.residual == "parallel" or (
        spec.block.residual == "auto" and (ffn_norm is None or ffn_norm.name.replace("{i}", "0") not in tensor_names))
    q_norm, qk_norm = spec.tensors.layer.attn_q_norm, spec.attention.qk_norm  # type: ignore[attr-defined]
    has_qk_norm = qk_norm is not None and (qk_norm.presence == "required" or (
        q_norm is not None and q_norm.name.replace("{i}", "0") in tensor_names))
    if context_length is not None and not 0 < context_length <= MAX_SIZE:
        raise ConfigError(f"context_length={context_length} must be a positive number of tokens")
    config = ModelConfig(architecture=arch, fused_qkv=fused, parallel_residual=parallel, qk_norm=has_qk_norm,
                         run_context_length=context_length or values["context_length"], **values)
    check_config(config, spec, where)
    return config


def check_config(c: ModelConfig, spec: Spec, where: str) -> None:
    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    if c.n_layers > MAX_LAYERS:
        fail(f"n_layers = {c.n_layers} is more than {MAX_LAYERS}")
    if c.n_heads % c.n_kv_heads:
        fail(f"n_heads = {c.n_heads} is not a multiple of n_kv_heads = {c.n_kv_heads}")
    if spec.attention.rope.layers != "none" and (c.rope_dims > c.head_dim or c.rope_dims % 2):
        fail(f"rope_dims = {c.rope_dims} must be even and at most head_dim = {c.head_dim}")
    if spec.attention.rope.layers != "none" and c.rope_scaling == "yarn" and c.rope_base == 1.0:
        fail("rope_base = 1 cannot be used with YaRN scaling (its correction dimensions divide by log(base))")
    if c.has_experts:
        if spec.ffn.experts is None:
            fail(f"the file has {c.expert_count} experts per layer but spec `{spec.name}` has no "
                 "ffn.experts section")
        if c.expert_count > MAX_EXPERTS:
            fail(f"expert_count = {c.expert_count} is more than {MAX_EXPERTS}")
        if not 0 < c.expert_used_count <= c.expert_count:
            fail(f"expert_used_count = {c.expert_used_count} must be between 1 and expert_count = "
                 f"{c.expert_count}")
        if c.expert_intermediate_size == 0:
            fail("expert_intermediate_size is 0 in a model with experts")
    elif c.intermediate_size == 0:
        fail("intermediate_size (feed_forward_length) is 0 in a dense model")
