"""`tfb check`, metadata half: every key a spec's hparams rules read, and the config they give.

A key may be present, absent with a default (a note: which default, and its value), or absent without
one (an error at the rule's line). The config itself comes from `build_config`, the loader's own path;
when it rejects a value, the offending key is set aside and the config built again, so that one run
reports every bad key rather than the first.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from tfb.authoring.findings import Finding, show_mark
from tfb.config import ModelConfig
from tfb.errors import ConfigError
from tfb.gguf.reader import MetaValue
from tfb.hparams import build_config
from tfb.spec.fields import FIELD_BY_NAME, FIELDS
from tfb.spec.schema import Derived, HParam, Spec
from tfb.spec.yamlfile import Key, Mark


@dataclass
class KeyReport:
    findings: list[Finding] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # keys present and used
    defaulted: list[tuple[str, str, str, str]] = field(default_factory=list)  # field, where, subject, origin
    missing: list[str] = field(default_factory=list)  # required config fields without a key or default
    default_values: list[str] = field(default_factory=list)  # "field = value" for each defaulted field
    config: ModelConfig | None = None  # None when the metadata gives no usable config


def rule_mark(marks: Mapping[Key, Mark], name: str, spec_file: str) -> str:
    """The line of the hparams rule for config field `name` (or of `hparams:`, or the spec file)."""
    for key in (("hparams", name), ("hparams",)):
        if key in marks:
            return show_mark(marks[key])
    return spec_file


def _describe_default(rule: HParam) -> str:
    default = rule.default
    if not isinstance(default, Derived):
        return "the rule's default"
    if default.field is not None:
        return f"`{default.field}`"
    if default.quotient is not None:
        return "{} / {}".format(*default.quotient)
    if default.product is not None:
        return "{} x {}".format(*default.product)
    if default.difference is not None:
        return "{} - {}".format(*default.difference)
    if default.sqrt is not None:
        return f"sqrt({default.sqrt})"
    if default.inverse_sqrt is not None:
        return f"1/sqrt({default.inverse_sqrt})"
    return f"the length of {default.length_of}"


def scan_keys(spec: Spec, marks: Mapping[Key, Mark], metadata: Mapping[str, MetaValue], arch: str,
              spec_file: str) -> KeyReport:
    """Which keys each rule finds; missing required keys are errors, defaults are notes (values later)."""
    report = KeyReport()
    for f in FIELDS:
        rule = getattr(spec.hparams, f.name)
        templates = rule.keys() if isinstance(rule, HParam) else []
        keys = [t.replace("{arch}", arch) for t in templates]
        found = next((k for k in keys if k in metadata), None)
        if found is not None:
            report.read.append(found)
            continue
        if not keys:
            continue  # a constant of the spec, or a built-in default: no key to look for
        where = rule_mark(marks, f.name, spec_file)
        subject = f"key {' or '.join(keys)}"
        if isinstance(rule, HParam) and rule.default is not None:
            report.defaulted.append((f.name, where, subject, _describe_default(rule)))
        elif f.default is not None:
            report.defaulted.append((f.name, where, subject, "the built-in default"))
        else:
            report.missing.append(f.name)
            report.findings.append(Finding("error", where, subject, f"missing, and the rule for `{f.name}` gives "
                                           f"no default ({f.doc}); add `default:` to the rule or fix the key"))
    return report


_WORD = re.compile(r"[A-Za-z_][\w.]*")


def _blame(message: str, metadata: Mapping[str, MetaValue]) -> tuple[str | None, str | None]:
    """The config field and the metadata key a ConfigError message names, when it names them."""
    words = _WORD.findall(message)
    field_name = next((w.strip(".") for w in words if w.strip(".") in FIELD_BY_NAME), None)
    key = next((w.strip(".") for w in words if w.strip(".") in metadata), None)
    return field_name, key


def _placeholder(name: str) -> MetaValue:
    """A harmless stand-in for a missing or rejected value, so that the search for further bad keys goes
    on; the config built with it is never used."""
    f = FIELD_BY_NAME[name]
    if f.kind == "int":
        return MetaValue(1, "uint32")
    if f.kind == "float":
        return MetaValue(1.0, "float32")
    if f.kind == "bool":
        return MetaValue(False, "bool")
    return MetaValue(f.choices[0] if f.choices else "", "string")


def build_checked_config(spec: Spec, marks: Mapping[Key, Mark], metadata: Mapping[str, MetaValue],
                         tensor_names: Collection[str], arch: str, model: str, spec_file: str,
                         report: KeyReport) -> None:
    """Fill `report.config` through build_config, turning each rejection into an error finding.

    A rejected or missing value is replaced by a stand-in and the config built again, so that every bad
    key is found in one run; once anything was replaced, config-wide complaints (head counts...) may be
    the stand-in's fault, so they are reported only when nothing was.
    """
    meta = dict(metadata)
    for name in report.missing:
        rule = getattr(spec.hparams, name)
        meta[rule.keys()[0].replace("{arch}", arch)] = _placeholder(name)
    replaced = set(report.missing)
    for _ in range(len(FIELDS) + 1):
        try:
            config = build_config(spec, meta, tensor_names, arch=arch, where=model)
        except ConfigError as e:
            message = str(e).removeprefix(f"{model}: ")
            field_name, key = _blame(message, metadata)
            if key is None or field_name is None or field_name in replaced:
                if not replaced:
                    where = rule_mark(marks, field_name, spec_file) if field_name else spec_file
                    report.findings.append(Finding("error", where, "config", message))
                return
            report.findings.append(Finding("error", rule_mark(marks, field_name, spec_file), f"key {key}", message))
            meta[key] = _placeholder(field_name)
            replaced.add(field_name)
        else:
            report.config = None if replaced else config
            return


def finish_notes(report: KeyReport) -> None:
    """Notes for the keys that were absent and defaulted, with the values the config got."""
    values = report.config.describe() if report.config else {}
    for name, where, subject, origin in report.defaulted:
        value = f" = {values[name]!r}" if name in values else ""
        report.findings.append(Finding("note", where, subject, f"absent; `{name}`{value} from {origin}"))
        report.default_values.append(f"{name}{value}")
