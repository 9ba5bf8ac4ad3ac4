"""Checkpoint naming tables: how a spec's GGUF names and metadata keys come from a transformers checkpoint.

A table is data, one file per spec under `specs/checkpoint/NAME.yaml`, merged along the spec's `extends`
chain (a family's table overrides or adds entries of its base's; `null` drops one; `include: [NAME]` merges
the entries of other tables of the directory first, for a spec that shares a sibling's naming; `renames`
reads checkpoint name prefixes as others, as the converter renames them before its name map). It says:

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
  per head: a latent attention's kv_b into its key and value parts), `strided` (every step-th slice along
  a dimension, from `start`: gate and up rows stored interleaved), `values` (not read: a float32 vector
  from a config.json list of numbers, as rope factors), `squeeze` (size-1 dimensions dropped),
  `reshape`, `negative_exp` (x -> -exp(x)), `scale` / `scale_rows` (multiplied by config values),
  `deinterleave` (per-group parts of a fused projection gathered part by part), `tile_heads` (heads grouped by
  the head they share reordered to tiled), and tensors computed from config.json (`wavelength_bands`,
  `partial_rotation`: rope frequency factors).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tfb.errors import SpecError

MetaType = Literal["uint32", "int32", "uint64", "float32", "bool", "string", "array[int32]", "array[float32]",
                   "array[string]", "array[bool]", "array[uint32]"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Split(_Strict):
    groups: str | int | None = Field(None, description="the number of head groups the rows form: a metadata key "
                                     "({arch}), a config.json key or a number; none: the rows form one group, cut "
                                     "without a group dimension")
    sizes: list[str | int] = Field(description="rows of each group's parts: keys as `groups`, or numbers")
    part: int = Field(description="which part this tensor is")
    transpose: bool = Field(False, description="each group's part transposed ([rows, in] -> [in, rows])")


class ScaleRows(_Strict):
    rows: list[Any] = Field(description="rows of each band but the last, which takes the rest: operands (config "
                            "keys, {arch} metadata keys, numbers, arithmetic)")
    factors: list[Any] = Field(description="each band's factor, one more than `rows`: operands")


class Append(_Strict):
    count: Any = Field(description="how many trailing layers: an operand")
    value: Any = Field(description="each one's value: an operand")


class PerLayer(_Strict):
    """An array with one value per layer: `value` where the layer's type is one of `where` (or not one of
    `where_not`), else `otherwise`. The types are the first present of `types`: a config list of type names, or a
    string with one letter per layer."""

    types: list[str]
    where: list[str] | None = None
    where_not: list[str] | None = None
    value: Any
    otherwise: Any = 0
    append: Append | None = Field(None, description="layers after those the types list (a converter's extra "
                                  "blocks: a multi-token-prediction head)")

    @model_validator(mode="after")
    def _one_selection(self) -> PerLayer:
        if (self.where is None) == (self.where_not is None):
            raise ValueError("per_layer takes one of `where` (the types that take `value`) or `where_not`")
        return self


class Strided(_Strict):
    step: int = Field(gt=0, description="keep one slice of every `step`")
    start: int = Field(0, ge=0, description="the first slice kept (0 .. step - 1)")
    dim: int = Field(-2, le=-1, description="the dimension, counted from the last (torch order, after `transpose`; "
                     "-2: a matrix's rows, -1: a vector's values)")


class Deinterleave(_Strict):
    """Rows in `groups` groups of sum(sizes) rows, each group cut into parts of `sizes` rows; the result is, for
    each part listed in `parts` in order, that part of every group, group after group (a fused projection stored
    per head [q, k, v, z] written as [all q; all k; all v]). Numbers are operands: config keys, metadata keys
    ({arch}), numbers or arithmetic."""

    groups: Any
    sizes: list[Any]
    parts: list[int]


class TileHeads(_Strict):
    """Along dimension `dim` (0: rows, 1: columns), the entries after the first `skip` viewed as
    [groups, per_group, size] are reordered to [per_group, groups, size]: heads stored grouped by the head they
    share (g0h0, g0h1, g1h0, g1h1) become tiled (g0h0, g1h0, g0h1, g1h1), as ggml's broadcast repeats them."""

    groups: Any
    per_group: Any
    size: Any = 1
    skip: Any = 0
    dim: int = 0


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
    values: str | None = Field(None, description="config.json key of a list of numbers: not read but written from "
                               "it, a float32 vector (rope factors the converter writes as tensors)")
    permute_rows: str | None = Field(None, description="metadata key of the head count for the rope row regrouping")
    stack: str | None = Field(None, description="metadata key of the expert count: {e} stacked along dim 0")
    add: float = Field(0.0, description="constant added to the values (norm weights stored as 1 + w)")
    transpose: bool = Field(False, description="last two dimensions swapped (weights stored [in, out])")
    split: Split | None = None
    squeeze: bool = Field(False, description="dimensions of size 1 dropped (conv weights [C, 1, K] -> [C, K])")
    reshape: list[Any] | None = Field(None, description="the new shape: operands, one may be -1 (the rest)")
    negative_exp: bool = Field(False, description="x -> -exp(x) (a decay stored as its log, A = -exp(A_log)), on "
                               "bfloat16 widened to float32 first, as the converter")
    scale: list[Any] = Field(default_factory=list, description="operands the values are multiplied by, in turn, in "
                             "the checkpoint's type (bfloat16 widened to float32 first, as the converter)")
    scale_rows: ScaleRows | None = None
    strided: Strided | None = Field(None, description="every step-th slice along a dimension: rows stored "
                                    "interleaved (gate, up, gate, up, ...)")
    deinterleave: Deinterleave | None = None
    tile_heads: TileHeads | None = None
    partial_rotation: PartialRotation | None = Field(None, description="a tensor computed from config.json, not "
                                                     "read")


class MetaRule(_Strict):
    from_: list[str] = Field(default_factory=list, alias="from", description="config.json keys, first present")
    file: str = Field("config.json", description="the checkpoint's JSON file the `from` keys are read from "
                      "(tokenizer_config.json for a key the converter takes from there)")
    value: Any = Field(None, description="a constant, written when no `from` key is present")
    # arithmetic on config.json values, used when no `from` key is present; an operand is a config key, a metadata
    # key computed before it ({arch}), a number, a nested {sum|product|quotient: [a, b]}, {length: key} (of a config
    # list or string), {layers_of: PREFIX}, or a list of operands (the first present); quotients divide whole
    # numbers (int(a) // int(b)), as the converter
    sum: tuple[Any, Any] | None = Field(None, description="a + b")
    product: tuple[Any, Any] | None = Field(None, description="a * b")
    quotient: tuple[Any, Any] | None = Field(None, description="int(a) // int(b)")
    sqrt: Any = Field(None, description="the square root of an operand (nested operands may also be {ratio: [a, b]} "
                      "a / b, {log: a}, {max: [a, b]})")
    map: dict[str, Any] | None = Field(None, description="config value -> written value (each element's, for a "
                                       "list written as an array)")
    pad_to: Any = Field(None, description="an array cut or padded with zeros (false) to this length: a number, "
                        "a metadata key ({arch}) written before it, a config key or arithmetic")
    per_layer: PerLayer | None = Field(None, description="an array of one value per layer, by layer type")
    cases: list[MetaRule] = Field(default_factory=list, description="rules tried in order, the first that gives a "
                                  "value wins (each with its own `when`)")
    token: str | None = Field(None, description="the id of this token text in the vocabulary (special token ids "
                              "a converter sets by text), where the tokenizer files give none")
    type: MetaType = "uint32"
    written: bool = Field(True, description="false: read by the spec's rules but not a key the converter writes")
    when: dict[str, Any] = Field(default_factory=dict, description="config.json key -> value (or list of values) "
                                 "this key needs")
    needs: list[str] = Field(default_factory=list, description="config.json keys that must be present (whatever "
                             "their value) for this key: a converter that checks `key in config`")
    when_all: dict[str, Any] = Field(default_factory=dict, description="config.json list key -> the value each of "
                                     "its elements must be for this key to be written")
    nonzero: list[Any] = Field(default_factory=list, description="config.json keys (or arithmetic) this key needs "
                               "present and nonzero (a width written only where the part it sizes exists)")


class Rename(_Strict):
    """A checkpoint name prefix read as another (the converter's renaming before its name map): `{j}` in the
    prefix matches a layer number j (absent: j = 0), written in `to` as j + the value of `offset`."""

    to: str
    offset: Any = Field(0, description="added to j: an operand (config or {arch} metadata key, number, arithmetic)")
    needs: list[str] = Field(default_factory=list, description="config.json keys that must be present")


class Table(_Strict):
    architectures: list[str] = Field(default_factory=list)
    gguf_architecture: str | None = Field(None, description="general.architecture (default: the spec's first match)")
    architecture_if: dict[str, list[str]] = Field(default_factory=dict, description="general.architecture -> "
                                                  "config.json keys whose presence selects it (the converter picks "
                                                  "the architecture by the config)")
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
    vocab_size: Any = Field(None, description="the token count the converter writes (tokens past the tokenizer's "
                            "as [PAD{i}]): an operand; default config.json's vocab_size")
    keep_f32: list[str] = Field(default_factory=list, description="GGUF tensor names ({i}: any layer) the "
                                "converter always writes as F32, whatever the output type")
    skip: list[str] = Field(default_factory=list, description="checkpoint tensor name patterns (* any text) the "
                            "converter leaves out of the text model's file (a vision tower: its mmproj file's)")
    renames: dict[str, Rename] = Field(default_factory=dict, description="checkpoint name prefixes read as others, "
                                       "in order, each on the result of the previous")


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
        for data in [*_included(path), read_table(path)]:
            _merge(merged, data)
        if "architectures" not in read_table(path):  # served architectures are not inherited
            merged.pop("architectures", None)
    if not found:
        return None
    try:
        return Table.model_validate(merged)
    except ValidationError as e:
        raise SpecError(f"{table_dir(chain[-1]) / chain[-1].name}: checkpoint naming table: {e}") from None


def _included(path: Path) -> list[dict[str, Any]]:
    """The tables a table's `include` names (same directory), each without its architectures."""
    names = read_table(path).get("include") or []
    if not isinstance(names, list):
        raise SpecError(f"{path}: `include` is a list of table names")
    out = []
    for name in names:
        other = path.parent / f"{name}.yaml"
        if not other.is_file():
            raise SpecError(f"{path}: `include` names {name!r}, but there is no {other}")
        out.append({k: v for k, v in read_table(other).items() if k not in ("architectures", "include")})
    return out


def _merge(merged: dict[str, Any], data: dict[str, Any]) -> None:
    """One table's entries over the merged ones: metadata, tensors and renames by key, keep_f32 and skip
    appended."""
    for key, value in data.items():
        if key in ("keep_f32", "skip"):
            merged[key] = [*merged.get(key, []), *(value or [])]
        elif key == "metadata" and data.get("own_metadata"):
            merged[key] = dict(value or {})
        elif key in ("metadata", "tensors", "renames"):
            merged.setdefault(key, {}).update(value or {})
        elif key != "include":
            merged[key] = value
