"""The spec language as a JSON Schema, for editors (YAML language servers): completion, hover docs and
errors while typing. Derived from the pydantic models, so it cannot drift from what `tfb validate`
accepts; the shorthands the models expand before validation are added here, since pydantic's schema
describes only the expanded form. No torch."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from tfb.spec.kinds import DEFAULT_KIND, FFN_KINDS, MIXER_KINDS
from tfb.spec.kinds.attention import ProjectionBias, QKNorm, Rope
from tfb.spec.schema import HParam, Norm, Spec, TensorRef

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCALAR = {"type": ["boolean", "number", "string"]}


def _enum_of(definition: dict[str, Any], prop: str) -> dict[str, Any]:
    return {"enum": list(definition["properties"][prop]["enum"])}


def _shorthands(defs: dict[str, Any]) -> dict[type[BaseModel], dict[str, Any]]:
    """Model -> the schema of the short form its `_shorthand` validator expands."""
    presence = _enum_of(defs[ProjectionBias.__name__], "q")["enum"]
    return {
        Norm: _enum_of(defs[Norm.__name__], "kind"),  # `norm: layernorm`
        QKNorm: _enum_of(defs[QKNorm.__name__], "kind"),  # `qk_norm: rmsnorm`
        Rope: {"const": "none"},  # `rope: none`
        ProjectionBias: {"enum": [*presence, "qkv"]},  # `bias: optional`, `bias: qkv`
        HParam: SCALAR,  # `expert_weights_norm: true`: a constant
        TensorRef: {"type": "string"},  # `attn_q: blk.{i}.attn_q.weight`
    }


def spec_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) that every valid spec file satisfies, shorthands included."""
    schema = copy.deepcopy(Spec.model_json_schema(by_alias=True))
    defs: dict[str, Any] = schema["$defs"]
    for model, short in _shorthands(defs).items():
        full = defs[model.__name__]
        defs[model.__name__] = {"title": full.get("title", model.__name__),
                                "description": full.get("description", ""), "anyOf": [short, full]}
    # `qk_norm: none` reads as no Q/K norm (Attention's validator)
    defs["Attention"]["properties"]["qk_norm"]["anyOf"].append({"const": "none"})
    # `mixer:` and `ffn:` take one section (every layer) or a list of them; a section without `kind:` is
    # of the default kind, so the others must name theirs
    for role, kinds in (("mixer", MIXER_KINDS), ("ffn", FFN_KINDS)):
        for name, cls in kinds.items():
            if name != DEFAULT_KIND[role]:
                defs[cls.__name__]["required"] = sorted({*defs[cls.__name__].get("required", []), "kind"})
        listed = schema["properties"][role]
        listed["items"] = {"anyOf": listed["items"]["oneOf"]}
        schema["properties"][role] = {"description": listed.get("description", ""),
                                      "anyOf": [listed["items"], {k: v for k, v in listed.items() if k != "default"}]}
    # a spec's name is its file name; writing it is optional
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    if not schema["required"]:
        del schema["required"]
    return {"$schema": DIALECT, **schema,
            "title": "tfb spec", "description": "One architecture family for tfb (docs/spec-language.md)."}
