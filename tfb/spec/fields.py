"""The config fields a spec's `hparams:` section may fill, as the spec language sees them.

Derived from `ModelConfig`, the one place that defines them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, cast

from tfb.config import HPARAM_FIELDS

Kind = Literal["int", "float", "bool", "str"]


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    doc: str
    default: int | float | bool | str | None  # None: a concrete spec must give a rule
    range: str
    choices: tuple[str, ...]


def _field(f: dataclasses.Field) -> Field:
    kind = cast(Kind, f.type if isinstance(f.type, str) else f.type.__name__)
    default = None if f.default is dataclasses.MISSING else f.default
    return Field(f.name, kind, f.metadata["doc"], default, f.metadata["range"], f.metadata["choices"])


FIELDS: tuple[Field, ...] = tuple(_field(f) for f in HPARAM_FIELDS)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
