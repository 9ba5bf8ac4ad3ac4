"""The map of llama.cpp's decoder-only text architectures against what tfb has: for each one, the packaged
spec that serves it, or the kinds and features still missing.

The needs of each architecture are written by hand in tools/llama_cpp_architectures.yaml; what tfb has is
read from tfb itself: the specs' `match:` lists, the kind registry (available_kinds) and the spec
features listed in the data file. So a status changes by itself when a spec or a kind lands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tfb.spec import Spec, load_spec  # noqa: E402
from tfb.spec.base import LayerRule  # noqa: E402
from tfb.spec.kinds.routed import GATING_FUNCS  # noqa: E402

DATA = Path(__file__).resolve().parent / "llama_cpp_architectures.yaml"

# What tfb had before the kind registry (tfb.spec.kinds) existed: softmax attention, dense and routed MLPs.
FALLBACK_MIXERS = frozenset({"attention"})
FALLBACK_FFNS = frozenset({"dense", "routed"})

# Features with a switch in the spec language: whether a spec sets it. A served architecture whose spec
# leaves one of its features off is served only in part; a spec that sets one the data file does not list
# means the data file is wrong (a test checks this).
def _any(sections: list[Any], test: Callable[[Any], bool], kind: str) -> bool:
    """Some section of `kind` passes `test` (a parallel section's branches included)."""
    return any((s.kind == kind and test(s)) or _any(getattr(s, "branches", []), test, kind) for s in sections)


def _attention(s: Spec, test: Callable[[Any], bool]) -> bool:
    return _any(s.mixer, test, "attention")


def _routed(s: Spec, test: Callable[[Any], bool]) -> bool:
    return _any(s.ffn, test, "routed")


def _ffn_rule(s: Spec, condition: str) -> bool:
    """Some ffn section's `layers:` rule has this condition (below, every...)."""
    return any(isinstance(sec.layers, LayerRule) and getattr(sec.layers, condition) is not None for sec in s.ffn)


def _gating(s: Spec, r: Any, scores: str) -> bool:
    """A routed section scores by `scores`: named, or as the default of `gating: expert_gating_func`."""
    default = getattr(s.hparams.expert_gating_func, "default", None)  # type: ignore[attr-defined]
    return bool(r.gating == scores or (r.gating == "expert_gating_func" and GATING_FUNCS.get(default) == scores))


SPEC_SWITCHES: dict[str, Callable[[Spec], bool]] = {
    "layernorm": lambda s: s.norm.kind == "layernorm",
    "weightless_norm": lambda s: not s.norm.parametric,
    "post_norm": lambda s: s.block.post_norm,
    "parallel_residual": lambda s: s.block.residual != "sequential",
    "parallel_mixers": lambda s: any(m.kind == "parallel" for m in s.mixer),
    "qk_norm": lambda s: _attention(s, lambda a: a.qk_norm is not None and a.qk_norm.parametric),
    "qk_l2_norm": lambda s: _attention(s, lambda a: a.qk_norm is not None and not a.qk_norm.parametric),
    "chunked_attention": lambda s: _attention(s, lambda a: a.chunked != "none"),
    "weight_before_experts": lambda s: _routed(s, lambda r: r.weights == "input"),
    "nope_layers": lambda s: _attention(s, lambda a: isinstance(a.rope.layers, list)),
    "no_rope": lambda s: _attention(s, lambda a: a.rope.layers == "none"),
    "learned_positions": lambda s: s.embedding.positions == "learned",
    "sliding_window": lambda s: _attention(s, lambda a: a.sliding_window != "none"),
    "sinks": lambda s: _attention(s, lambda a: a.sinks),
    "q_output_gate": lambda s: _attention(s, lambda a: a.output_gate != "none"),
    "sigmoid_gating": lambda s: _routed(s, lambda r: _gating(s, r, "sigmoid")),
    "softmax_selected_gating": lambda s: _routed(s, lambda r: _gating(s, r, "softmax_selected")),
    "gating_from_file": lambda s: _routed(s, lambda r: r.gating == "expert_gating_func"),
    "selection_bias": lambda s: _routed(s, lambda r: r.selection_bias != "none"),
    "shared_experts": lambda s: _routed(s, lambda r: r.shared is not None and r.shared.gate == "none"),
    "gated_shared_experts": lambda s: _routed(s, lambda r: r.shared is not None and r.shared.gate == "sigmoid"),
    "leading_dense_layers": lambda s: _ffn_rule(s, "below"),
    "moe_layer_step": lambda s: _ffn_rule(s, "every"),
    "no_ffn": lambda s: any(f.kind == "none" for f in s.ffn),
    "split_layers": lambda s: any(m.kind == "none" for m in s.mixer),
    "latent_experts": lambda s: _routed(s, lambda r: r.latent != "none"),
    "kv_sharing": lambda s: _attention(s, lambda a: a.kv_from is not None),
    "k_equals_v": lambda s: _attention(s, lambda a: a.v_proj == "optional"),
    "v_norm": lambda s: _attention(s, lambda a: a.v_norm != "none"),
    "per_layer_embeddings": lambda s: s.embedding.per_layer is not None,
    "layer_output_scale": lambda s: s.block.output_scale != "none",
}
# Kinds a spec can leave out although tfb has them: a spec without `experts` runs dense files only.
SPEC_KINDS: dict[str, Callable[[Spec], bool]] = {
    "routed": lambda s: _routed(s, lambda r: True),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    arch: list[str]
    mixer: list[str]
    ffn: list[str]
    features: list[str]
    note: str


class ArchitectureData(_Strict):
    """tools/llama_cpp_architectures.yaml, checked: every kind and feature an entry names is defined."""

    llama_cpp_python: str  # the pinned sdist the map describes
    mixer_kinds: dict[str, str]
    ffn_kinds: dict[str, str]
    features: dict[str, str]
    spec_features: list[str]
    skipped: dict[str, list[str]]  # why -> src/models file stems
    architectures: dict[str, Architecture]

    @model_validator(mode="after")
    def _names_are_defined(self) -> ArchitectureData:
        problems = [f"spec_features: `{f}` is not under features" for f in self.spec_features
                    if f not in self.features]
        for file, entry in self.architectures.items():
            for field, names, known in (("mixer", entry.mixer, self.mixer_kinds), ("ffn", entry.ffn, self.ffn_kinds),
                                        ("features", entry.features, self.features)):
                problems += [f"{file}.{field}: `{n}` is not defined" for n in names if n not in known]
        skipped = [file for files in self.skipped.values() for file in files]
        problems += [f"skipped: `{file}` is listed twice, or also under architectures" for file in sorted(set(skipped))
                     if skipped.count(file) + (file in self.architectures) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_data(path: Path = DATA) -> ArchitectureData:
    try:
        return ArchitectureData.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        raise SystemExit(f"{path}: {err}") from None


def available_kinds() -> tuple[frozenset[str], frozenset[str]]:
    """The mixer and feed-forward kinds tfb registers (tfb.spec.kinds), or the ones it had before that
    registry existed."""
    try:
        from tfb.spec.kinds import FFN_KINDS, MIXER_KINDS
    except ImportError:  # also when the module lacks either name
        return FALLBACK_MIXERS, FALLBACK_FFNS
    return frozenset(MIXER_KINDS), frozenset(FFN_KINDS)


def served_by(spec_dir: Path = ROOT / "specs") -> dict[str, Spec]:
    """general.architecture -> the packaged spec that matches it (the first by file name, as tfb picks)."""
    served: dict[str, Spec] = {}
    for path in sorted(spec_dir.glob("*.yaml")):
        spec = load_spec(path)
        if not spec.abstract:
            for arch in spec.match:
                served.setdefault(arch, spec)
    return served


@dataclass(frozen=True)
class Status:
    spec: str | None  # the packaged spec serving the architecture
    missing: tuple[str, ...]  # kinds and features tfb lacks, or (when served) that the spec leaves off

    def text(self) -> str:
        if self.spec is not None:
            return f"served by `{self.spec}`" + (f"; lacks {', '.join(self.missing)}" if self.missing else "")
        return f"missing: {', '.join(self.missing)}" if self.missing else "needs only a spec"


def status(entry: Architecture, data: ArchitectureData, served: dict[str, Spec],
           kinds: tuple[frozenset[str], frozenset[str]]) -> Status:
    mixers, ffns = kinds
    missing = [k for k in entry.mixer if k not in mixers] + [k for k in entry.ffn if k not in ffns]
    missing += [f for f in entry.features if f not in data.spec_features]
    spec = next((served[a] for a in entry.arch if a in served), None)
    if spec is None:
        return Status(None, tuple(missing))
    for name in (*entry.ffn, *entry.features):
        check = SPEC_KINDS.get(name) or SPEC_SWITCHES.get(name)
        if check is not None and name not in missing and not check(spec):
            missing.append(name)
    return Status(spec.name, tuple(missing))


def statuses(data: ArchitectureData, spec_dir: Path = ROOT / "specs",
             kinds: tuple[frozenset[str], frozenset[str]] | None = None) -> dict[str, Status]:
    """File stem -> status, for every architecture in the data file."""
    served, kinds = served_by(spec_dir), kinds or available_kinds()
    return {file: status(entry, data, served, kinds) for file, entry in data.architectures.items()}
