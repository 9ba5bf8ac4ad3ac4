"""The torch side of the kind registry: one module per mixer kind (tfb/nn/mixers) and per feed-forward
kind (tfb/nn/ffn), each found by the kind name its schema section (tfb/spec/kinds) declares.

A kind module defines `KIND` (its name), `TARGETS` (tensor slot -> attribute path under the module and
the method that takes the tensor; or `section_targets(section)`, where they depend on the section) and
`build(section, config, context) -> nn.Module`, the module taking `forward(x, step, state)` (a mixer;
`new_state(dtype)` makes its layer's cache state) or `forward(x, step)` (a feed-forward). A module may also
offer `plan_step(plan, x) -> output buffer`, its part of a decoding step run natively (tfb.nn.step); a model
with a module without one decodes through the modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from torch import nn

from tfb.config import ModelConfig
from tfb.nn.norm import Norm
from tfb.nn.rotary import RopeParams, Rotary
from tfb.spec.base import KindSection


@dataclass
class BuildContext:
    """What a kind's builder may use besides its section and its layer's config: the spec's norm, the
    layer index, and rotaries shared by every layer with the same rope parameters."""

    norm_kind: str
    weight_offset: float
    layer: int
    rotaries: dict[RopeParams, Rotary] = field(default_factory=dict)

    def rotary(self, params: RopeParams) -> Rotary:
        if params not in self.rotaries:
            self.rotaries[params] = Rotary(params)
        return self.rotaries[params]

    def norm(self, dim: int, eps: float, kind: str | None = None, groups: int = 0) -> Norm:
        """A norm of the spec's kind (or `kind`) over `dim`; the spec's weight offset applies to its own kind."""
        offset = self.weight_offset if kind is None else 0.0
        return Norm(kind or self.norm_kind, dim, eps, offset, groups)


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable[[Any, ModelConfig, BuildContext], nn.Module]
    targets: dict[str, tuple[str, str]]
    section_targets: Callable[[Any], dict[str, tuple[str, str]]] | None = None  # targets that depend on the section

    def targets_of(self, section: KindSection) -> dict[str, tuple[str, str]]:
        """Slot -> (attribute path, method) for a module built from `section`: `TARGETS`, or what the kind's
        `section_targets(section)` says (a kind whose module holds modules of other kinds)."""
        return self.targets if self.section_targets is None else self.section_targets(section)


def _discover(package: ModuleType) -> dict[str, Kind]:
    found: dict[str, Kind] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found[module.KIND] = Kind(module.KIND, module.build, module.TARGETS,
                                      getattr(module, "section_targets", None))
    return found


_REGISTRY: dict[str, dict[str, Kind]] = {}


def kind_of(section: KindSection) -> Kind:
    """The torch side of a spec section's kind."""
    if not _REGISTRY:
        from tfb.nn import ffn, mixers

        _REGISTRY.update(mixer=_discover(mixers), ffn=_discover(ffn))
    return _REGISTRY[section.role][section.kind]
