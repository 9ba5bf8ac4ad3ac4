"""Checkpoint naming tables: how a spec's GGUF names and metadata keys come from a transformers checkpoint.

A table is data, one file per spec under `specs/checkpoint/NAME.yaml`, merged along the spec's `extends`
chain (a family's table overrides or adds entries of its base's; `null` drops one). It says:

- `architectures`: the config.json `architectures` values it serves;
- `metadata`: each GGUF key (with `{arch}`) from config.json keys (the first present; `a.b` is key b of
  object a), a constant `value`, or a `map` of config values to written ones, with the GGUF type written;
- `tensors`: each GGUF tensor name (with `{i}` for the layer) from a checkpoint name, and the converter's
  transforms (llama.cpp's convert_hf_to_gguf.py) as data:
  `permute_rows` (Q/K rows regrouped for adjacent-pair rope: within each of H heads, row pairs (j, j + d/2)
  become adjacent, H from a metadata key), `stack` (per-expert tensors, `{e}` in the name, stacked along a
  new first dimension, their count from a metadata key), `add` (a constant added to every value: norm
  weights stored as 1 + w), `transpose` (the last two dimensions swapped: Conv1D weights stored [in, out]),
  `split` (the rows of a head-grouped tensor cut per head: a part of each head's rows, optionally transposed
  per head: a latent attention's kv_b into its key and value parts), and tensors computed from config.json
  (`wavelength_bands`, `partial_rotation`: rope frequency factors).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tfb.errors import SpecError

MetaType = Literal["uint32", "int32", "uint64", "float32", "bool", "string", "array[int32]", "array[float32]",
                   "array[string]", "array[bool]", "array[uint32]"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Split(_Strict):
    groups: str = Field(description="the number of head groups the rows form: a metadata key ({arch}) or a "
                        "config.json key")
    sizes: list[str | int] = Field(description="rows of each group's parts: keys as `groups`, or numbers")
    part: int = Field(description="which part this tensor is")
    transpose: bool = Field(False, description="each group's part transposed ([rows, in] -> [in, rows])")


class WavelengthBands(_Strict):
    """Rope frequency factors by wavelength band: for each rotated pair's frequency f_j = base^(-2j/dims), with
    wavelength w = 2 pi / f_j and the original context C: 1 where w < C / high, `factor` where w > C / low, else
    1 / ((1 - s) / factor + s) with s = (C / w - low) / (high - low). Each parameter is a list of operands (config
    keys, numbers, arithmetic), the first present wins."""

    base: list[Any]
    dims: list[Any]
    factor: list[Any]
    low: list[Any]
    high: list[Any]
    context: list[Any]


class PartialRotation(_Strict):
    """Rope frequency factors that rotate only the first pairs of a head: for a head of `dims` dimensions
    (dims / 2 pairs) and a rotated `fraction`, n = int(dims * fraction / 2) factors of 1, then dims / 2 - n
    factors of 1e30 (a frequency divided by 1e30 is 0: that pair is not rotated). Each parameter is a list of
    operands as in WavelengthBands."""

    dims: list[Any]
    fraction: list[Any]


class TensorRule(_Strict):
    from_: str = Field("", alias="from", description="checkpoint tensor name; {i} layer, {e} expert")
    when: dict[str, Any] = Field(default_factory=dict, description="config.json key -> value this rule needs")
    wavelength_bands: WavelengthBands | None = Field(None, description="a tensor computed from config.json, not read")
    permute_rows: str | None = Field(None, description="metadata key of the head count for the rope row regrouping")
    stack: str | None = Field(None, description="metadata key of the expert count: {e} stacked along dim 0")
    add: float = Field(0.0, description="constant added to the values (norm weights stored as 1 + w)")
    transpose: bool = Field(False, description="last two dimensions swapped (weights stored [in, out])")
    split: Split | None = None
    partial_rotation: PartialRotation | None = Field(None, description="a tensor computed from config.json, not "
                                                     "read")


class MetaRule(_Strict):
    from_: list[str] = Field(default_factory=list, alias="from", description="config.json keys, first present")
    file: str = Field("config.json", description="the checkpoint's JSON file the `from` keys are read from "
                      "(tokenizer_config.json for a key the converter takes from there)")
    value: Any = Field(None, description="a constant, written when no `from` key is present")
    # arithmetic on config.json values, used when no `from` key is present; an operand is a config key, a number or
    # a nested {sum|product|quotient: [a, b]}; quotients divide whole numbers (int(a) // int(b)), as the converter
    sum: tuple[Any, Any] | None = Field(None, description="a + b")
    product: tuple[Any, Any] | None = Field(None, description="a * b")
    quotient: tuple[Any, Any] | None = Field(None, description="int(a) // int(b)")
    map: dict[str, Any] | None = Field(None, description="config value -> written value")
    token: str | None = Field(None, description="the id of this token text in the vocabulary (special token ids "
                              "a converter sets by text)")
    type: MetaType = "uint32"
    written: bool = Field(True, description="false: read by the spec's rules but not a key the converter writes")
    when: dict[str, Any] = Field(default_factory=dict, description="config.json key -> value (or list of values) "
                                 "this key needs")
    per_layer: dict[str, dict[str, list[Any]]] | None = Field(
        None, description="{LIST: {entry: [operands]}}: an array, one value per entry of the config.json list LIST, "
        "the first present of the operands its entry names; written (as an int32 or float32 array, as gguf-py "
        "writes a list) only when every entry has one, else the rule's other fields give the value")


class Table(_Strict):
    architectures: list[str] = Field(default_factory=list)
    gguf_architecture: str | None = Field(None, description="general.architecture (default: the spec's first match)")
    own_metadata: bool = Field(False, description="the base tables' metadata entries do not apply (a converter "
                               "class that writes its own keys only)")
    metadata: dict[str, MetaRule | None] = Field(default_factory=dict)
    tensors: dict[str, TensorRule | None] = Field(default_factory=dict)
    vocab: list[Literal["spm", "spm_json", "bpe"]] = Field(
        ["spm", "bpe"], description="tokenizer files in the converter's order of attempts: spm (tokenizer.model), "
        "spm_json (a SentencePiece-style BPE tokenizer.json with byte fallback), bpe (byte-level BPE tokenizer.json)")
    merges: bool | None = Field(None, description="whether tokenizer.ggml.merges is written (default: for bpe "
                                "only, as the converter's tokenizer paths do)")
    user_defined_tokens: list[str] = Field(default_factory=list, description="token texts the converter marks "
                                           "USER_DEFINED whatever the tokenizer says (tokens it always shows)")
    keep_f32: list[str] = Field(default_factory=list, description="GGUF tensor names ({i}: any layer) the "
                                "converter always writes as F32, whatever the output type")


def table_dir(spec_file: Path) -> Path:
    return spec_file.parent / "checkpoint"


def _shorthand(data: dict[str, Any]) -> dict[str, Any]:
    """`key: name` and `key: [names]` for `{from: ...}`."""
    out = dict(data)
    for section in ("metadata", "tensors"):
        entries = out.get(section) or {}
        out[section] = {k: ({"from": [v] if section == "metadata" else v} if isinstance(v, str)
                            else {"from": v} if isinstance(v, list) else v) for k, v in entries.items()}
    return out


@functools.lru_cache(maxsize=64)
def read_table(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the checkpoint naming table: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a checkpoint naming table is a mapping")
    return _shorthand(data)


def load_table(chain: list[Path]) -> Table | None:
    """The merged table of a spec chain (base first), or None when no spec of it has a table."""
    merged: dict[str, Any] = {"metadata": {}, "tensors": {}}
    found = False
    for spec_file in chain:
        path = table_dir(spec_file) / spec_file.name
        if not path.is_file():
            continue
        found = True
        data = read_table(path)
        for key, value in data.items():
            if key == "keep_f32":
                merged[key] = [*merged.get(key, []), *(value or [])]
            elif key == "metadata" and data.get("own_metadata"):
                merged[key] = dict(value or {})
            elif key in ("metadata", "tensors"):
                merged[key].update(value or {})
            else:
                merged[key] = value
        if "architectures" not in data:  # served architectures are not inherited
            merged.pop("architectures", None)
    if not found:
        return None
    try:
        return Table.model_validate(merged)
    except ValidationError as e:
        raise SpecError(f"{table_dir(chain[-1]) / chain[-1].name}: checkpoint naming table: {e}") from None
