"""The registry of mixer and feed-forward kinds: each kind's schema section is one module of this
package, found by its `kind:` name.

A kind module defines one `KindSection` subclass with `role` ("mixer" or "ffn"), a `kind: Literal[...]`
naming it, the tensor slots it may read (`SLOTS`), the config fields it adds (`FIELDS`), and
`slots()`: which of those a file with given facts needs. Its torch module lives under tfb/nn/mixers or
tfb/nn/ffn with the same name. Adding a kind adds one module here and one there, and edits nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from tfb.spec.base import KindSection


def _discover() -> dict[str, dict[str, type[KindSection]]]:
    found: dict[str, dict[str, type[KindSection]]] = {"mixer": {}, "ffn": {}}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, KindSection) and value.__module__ == module.__name__ \
                    and getattr(value, "role", None) in found:
                name = value.model_fields["kind"].default
                found[value.role][name] = value
    return found


_KINDS = _discover()
MIXER_KINDS: dict[str, type[KindSection]] = _KINDS["mixer"]
FFN_KINDS: dict[str, type[KindSection]] = _KINDS["ffn"]
DEFAULT_KIND = {"mixer": "attention", "ffn": "dense"}


def _kind_of(default: str) -> Any:
    def tag(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("kind", default)
        return getattr(value, "kind", None)
    return tag


def section_type(role: str) -> Any:
    """The pydantic type of a `mixer:` or `ffn:` section: one kind's settings, chosen by `kind:`."""
    kinds = _KINDS[role]
    members = tuple(Annotated[cls, Tag(name)] for name, cls in kinds.items())
    return Annotated[Union[members], Discriminator(_kind_of(DEFAULT_KIND[role]))]  # noqa: UP007


def _complete_nested() -> None:
    """Sections that hold sections of other kinds (a `MixerSection` or `FfnSection` annotation, such as the
    parallel kind's branches) are completed once every kind is known."""
    namespace = {"MixerSection": section_type("mixer"), "FfnSection": section_type("ffn")}
    for kinds in _KINDS.values():
        for cls in kinds.values():
            if not cls.__pydantic_complete__:
                cls.model_rebuild(_types_namespace=namespace)


_complete_nested()


def all_slots() -> tuple[str, ...]:
    """Every per-layer tensor slot some kind reads, in registry order."""
    out: list[str] = []
    for kinds in _KINDS.values():
        for cls in kinds.values():
            out += [s for s in cls.SLOTS if s not in out]
    return tuple(out)


def kind_fields() -> tuple[Any, ...]:
    """The config fields the kinds add (tfb.spec.fields.Field), each once."""
    out: dict[str, Any] = {}
    for kinds in _KINDS.values():
        for cls in kinds.values():
            for f in cls.FIELDS:
                out.setdefault(f.name, f)
    return tuple(out.values())
