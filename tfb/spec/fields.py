"""The config fields a spec's `hparams:` section may fill, as the spec language sees them.

Derived from `ModelConfig` (the fields every model has) and from the kinds (the fields each adds).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, cast

from tfb.config import HPARAM_FIELDS
from tfb.spec.base import ConfigField
from tfb.spec.kinds import kind_fields

Kind = Literal["int", "float", "bool", "str"]
Field = ConfigField


def _field(f: dataclasses.Field) -> Field:
    kind = cast(Kind, f.type if isinstance(f.type, str) else f.type.__name__)
    default = None if f.default is dataclasses.MISSING else f.default
    return Field(f.name, kind, f.metadata["doc"], default, f.metadata["range"], f.metadata["choices"])


# the model's own fields, then those each kind adds
FIELDS: tuple[Field, ...] = (*(_field(f) for f in HPARAM_FIELDS), *kind_fields())
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
