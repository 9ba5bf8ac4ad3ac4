"""The pre-tokenizer table: `tokenizer.ggml.pre` value -> regexes that split text into words before BPE.

The table is data (pretokenizers.json next to this module): names, regexes and per-name flags copied from
llama.cpp, so that our ids match the ones it produces from the same file. It also maps the values of
`tokenizer.ggml.model` to the algorithms tfb implements. Regexes are applied one after the other, each
splitting every piece the previous one left, and both the matches and the text between them become pieces
(see regex_split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp treats one `tokenizer.ggml.pre` value."""

    regexes: tuple[str, ...]
    clean_spaces: bool = True  # the detokenizer drops the space before . , ! ? and in some contractions
    ignore_merges: bool = False  # a word that is already a token is not merged from its characters
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token when the file does not say
    no_bos: bool = False  # the vocabulary has no BOS token unless the file names one
    # False: words are merged as UTF-8 text (characters missing from the vocabulary are spelled as <0xNN>
    # tokens), not in GPT-2's byte-to-character mapping
    byte_encode: bool = True
    escape_spaces: bool = False  # spaces become "▁" before splitting, and "▁" decodes back to a space
    newline_runs_whole: bool = False  # a word of only newlines that is itself a token is never merged
    force_bos: bool = False  # BOS is added even where tokenizer.ggml.add_bos_token says false


def _load() -> dict[str, Any]:
    text = resources.files("tfb.text").joinpath("pretokenizers.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


_DATA = _load()
_FLAGS = ("clean_spaces", "ignore_merges", "add_bos", "no_bos", "byte_encode", "escape_spaces", "newline_runs_whole",
          "force_bos")

# `tokenizer.ggml.pre` -> pre-tokenizer
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    name: PreTokenizer(tuple(_DATA["regexes"][entry["regexes"]]), **{f: entry[f] for f in _FLAGS if f in entry})
    for name, entry in _DATA["pre_tokenizers"].items()
}

# Names llama.cpp knows but tokenizes with hand-written code (digit grouping, Han exclusion) or without
# byte-level encoding; tfb does not reproduce those and says so instead of tokenizing differently.
UNSUPPORTED_PRE: frozenset[str] = frozenset(_DATA["unsupported"])


@dataclass(frozen=True)
class TokenizerModel:
    """How llama.cpp treats one `tokenizer.ggml.model` value."""

    # "spm" (pieces merged by score), "bpe" (merges ranked by order), "wpm" (longest pieces first) or "ugm"
    # (the highest-scoring spelling)
    kind: str
    pre: str | None  # the pre-tokenizer this model value implies, whatever tokenizer.ggml.pre says
    ids: dict[str, int]  # default special-token ids (role -> id), used where the file names none


TOKENIZER_MODELS: dict[str, TokenizerModel] = {
    name: TokenizerModel(entry["kind"], entry.get("pre"), dict(entry["ids"]))
    for name, entry in _DATA["tokenizer_models"].items()
}
