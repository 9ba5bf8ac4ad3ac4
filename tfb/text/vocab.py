"""The vocabulary of a GGUF file (`tokenizer.ggml.*`), read and completed with llama.cpp's defaults.

Everything here follows llama.cpp's vocabulary loader (llama_vocab::impl::load): the defaults per
tokenizer model, the flags each pre-tokenizer name implies, special tokens found by their text when the
file does not name them, and the set of tokens that end generation. Values are type- and range-checked;
a bad one is a TokenizerError naming the key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfb.errors import TokenizerError
from tfb.gguf.reader import MetaValue
from tfb.text.pretokenizers import PRE_TOKENIZERS, TOKENIZER_MODELS, UNSUPPORTED_PRE, PreTokenizer
from tfb.text.special_texts import (
    ALWAYS_RENDERED,
    END_OF_GENERATION,
    ROLE_TEXTS,
    drop_conflicting_end_markers,
)

PREFIX = "tokenizer.ggml."
_INT_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (gguf.TokenType)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Attr(enum.IntFlag):
    """llama.cpp's token attributes; a token type maps to one, text rules may add CONTROL."""

    NONE = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


_ATTR_OF_TYPE = {
    TokenType.UNKNOWN: Attr.UNKNOWN, TokenType.UNUSED: Attr.UNUSED, TokenType.NORMAL: Attr.NORMAL,
    TokenType.CONTROL: Attr.CONTROL, TokenType.USER_DEFINED: Attr.USER_DEFINED, TokenType.BYTE: Attr.BYTE,
}
# tokens matched whole in the input before the text is tokenized
SPECIAL_ATTRS = Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN


class Kind(enum.Enum):
    SPM = "spm"  # SentencePiece pieces merged by score, <0xNN> byte fallback, "▁" for spaces
    BPE = "bpe"  # BPE with merges and a pre-tokenizer (byte-level unless the pre-tokenizer says otherwise)
    WPM = "wpm"  # WordPiece: longest pieces first, "▁" starting a word, lowercasing and accent stripping
    UGM = "ugm"  # Unigram: the highest-scoring spelling after SentencePiece's character-map normalisation


# The role keys (bos, eos, ...), in llama.cpp's order; later keys of the same role win, as there.
_ID_KEYS = (
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
    ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id"),
    ("mask", "mask_token_id"), ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
    ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"),
    ("fim_sep", "fim_sep_token_id"), ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"),
    ("fim_mid", "middle_token_id"),
)

# role -> the key that names its id (the first of several)
ID_KEYS = {role: key for role, key in reversed(_ID_KEYS)}


@dataclass
class Vocab:
    """Token texts, scores and attributes, special ids and the flags that steer (de)tokenizing."""

    kind: Kind
    tokens: list[str]
    scores: list[float]
    attrs: list[Attr]
    merges: list[tuple[str, str]]
    pre_name: str
    pre: PreTokenizer | None
    ids: dict[str, int | None]  # role -> token id ("bos", "eos", "eot", "eom", "unk", "pad", ...)
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    ignore_merges: bool
    stop_ids: frozenset[int]
    chat_template: str | None
    token_to_id: dict[str, int] = field(default_factory=dict)
    lowercase: bool = False  # WordPiece normalisation (tokenizer.ggml.normalizer.*)
    strip_accents: bool = False
    charsmap: bytes | None = None  # Unigram normalisation (tokenizer.ggml.precompiled_charsmap)
    remove_extra_whitespaces: bool = False


def read_vocab(metadata: Mapping[str, MetaValue], where: str) -> Vocab:
    """Build a Vocab from GGUF metadata; `where` (the file) prefixes every error message."""
    r = _Reader(metadata, where)
    model = r.string("model", required=True)
    if model not in TOKENIZER_MODELS:
        known = ", ".join(f"{m!r} ({spec.kind.upper()})" for m, spec in TOKENIZER_MODELS.items())
        raise TokenizerError(f"{where}: {PREFIX}model is {model!r}; tfb tokenizes {known} vocabularies")
    model_spec = TOKENIZER_MODELS[model]
    kind = Kind(model_spec.kind)
    tokens = r.strings("tokens", required=True)
    if not tokens:
        raise TokenizerError(f"{where}: {PREFIX}tokens is empty")
    n = len(tokens)
    # llama.cpp renames empty tokens so that every text maps to one id
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    scores = r.numbers("scores", n, ("float32", "int32"))
    types = r.numbers("token_type", n, ("int32",))
    attrs = [Attr.NORMAL] * n if types is None else [_attr_of_type(t) for t in types.tolist()]
    token_to_id = {t: i for i, t in enumerate(tokens)}  # a repeated text maps to its last id, as in llama.cpp

    pre_name, pre, merges = "", None, []
    if kind is Kind.BPE:
        pre_name = model_spec.pre or r.string("pre") or "default"
        if pre_name in UNSUPPORTED_PRE:
            raise TokenizerError(f"{where}: {PREFIX}pre is {pre_name!r}, a pre-tokenizer that llama.cpp implements "
                                 "with its own code; tfb does not support it")
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise TokenizerError(f"{where}: {PREFIX}pre is {pre_name!r}, which is not a pre-tokenizer llama.cpp "
                                 f"knows (known: {', '.join(sorted(PRE_TOKENIZERS))})")
        merges = _split_merges(r.strings("merges", required=True))

    ids = _default_ids(model_spec.ids, pre, n)
    for role, key in _ID_KEYS:
        value = r.integer(key)
        if value is not None and value < n:  # llama.cpp keeps the default for an out-of-range id
            ids[role] = value
    if kind is Kind.SPM:
        add_bos, add_space_prefix, clean_spaces, ignore_merges = True, True, False, False
    elif kind is Kind.WPM:
        add_bos, add_space_prefix, clean_spaces, ignore_merges = True, False, True, False
    elif kind is Kind.UGM:
        add_bos, add_space_prefix, clean_spaces, ignore_merges = False, False, False, False
    else:
        assert pre is not None
        add_bos, add_space_prefix, clean_spaces, ignore_merges = pre.add_bos, False, pre.clean_spaces, pre.ignore_merges
    add_space_prefix = r.boolean("add_space_prefix", add_space_prefix)
    add_bos = r.boolean("add_bos_token", add_bos) or (pre is not None and pre.force_bos)
    add_eos = r.boolean("add_eos_token", kind is Kind.UGM)
    remove_extra_whitespaces = r.boolean("remove_extra_whitespaces", False)
    charsmap = r.blob("precompiled_charsmap") if kind is Kind.UGM else None
    # llama.cpp's defaults: lowercase, and strip accents where it lowercases
    lowercase = r.boolean("normalizer.lowercase", True)
    strip_accents = r.boolean("normalizer.strip_accents", lowercase)

    _find_roles_by_text(ids, token_to_id, attrs)
    stop_ids = _end_of_generation(ids, token_to_id, tokens, attrs)
    for text in ALWAYS_RENDERED:
        if text in token_to_id:
            attrs[token_to_id[text]] = Attr.USER_DEFINED

    template = metadata.get("tokenizer.chat_template")
    chat_template = template.value if template is not None and template.type == "string" else None
    return Vocab(kind, tokens, [0.0] * n if scores is None else scores.tolist(), attrs, merges, pre_name, pre, ids,
                 add_bos, add_eos, add_space_prefix, clean_spaces, ignore_merges, stop_ids, chat_template, token_to_id,
                 lowercase, strip_accents, charsmap, remove_extra_whitespaces)


def _attr_of_type(token_type: int) -> Attr:
    # an unknown type number reads as UNDEFINED: such a token is never matched and decodes to nothing
    try:
        return _ATTR_OF_TYPE.get(TokenType(token_type), Attr.NONE)
    except ValueError:
        return Attr.NONE


def _default_ids(defaults: Mapping[str, int], pre: PreTokenizer | None, n: int) -> dict[str, int | None]:
    ids: dict[str, int | None] = dict.fromkeys((role for role, _ in _ID_KEYS), None)
    ids.update(defaults)
    if pre is not None and pre.no_bos:
        ids["bos"] = None
    # a default beyond the vocabulary is dropped, as llama.cpp does
    return {role: i if i is None or i < n else None for role, i in ids.items()}


def _split_merges(lines: list[str]) -> list[tuple[str, str]]:
    # llama.cpp splits at the first space after the first character (a part may itself start with one)
    out = []
    for line in lines:
        pos = line.find(" ", 1)
        out.append((line[:pos], line[pos + 1:]) if pos >= 0 else ("", ""))
    return out


def _find_roles_by_text(ids: dict[str, int | None], token_to_id: dict[str, int], attrs: list[Attr]) -> None:
    """Fill roles the file leaves unnamed from well-known token texts, marking those tokens as control."""
    for role, texts in ROLE_TEXTS.items():
        if ids[role] is not None:
            continue
        for text in texts:
            if text in token_to_id:
                token = ids[role] = token_to_id[text]
                attrs[token] |= Attr.CONTROL
                break


def _end_of_generation(ids: dict[str, int | None], token_to_id: dict[str, int], tokens: list[str],
                       attrs: list[Attr]) -> frozenset[int]:
    stop = {i for role in ("fim_pad", "fim_rep", "fim_sep") if (i := ids[role]) is not None}
    for text in END_OF_GENERATION:
        if text in token_to_id:
            stop.add(token_to_id[text])
            attrs[token_to_id[text]] |= Attr.CONTROL
    stop |= {i for role in ("eos", "eot", "eom") if (i := ids[role]) is not None}
    for i, becomes in drop_conflicting_end_markers(stop, tokens).items():
        stop.discard(i)
        attrs[i] = Attr.NORMAL if becomes == "normal" else Attr.USER_DEFINED
    return frozenset(stop)


class _Reader:
    """Typed access to `tokenizer.ggml.*` keys with errors that name the key."""

    def __init__(self, metadata: Mapping[str, MetaValue], where: str) -> None:
        self.metadata, self.where = metadata, where

    def _get(self, name: str, required: bool) -> MetaValue | None:
        meta = self.metadata.get(PREFIX + name)
        if meta is None and required:
            raise TokenizerError(f"{self.where}: {PREFIX}{name} is missing; the file has no usable vocabulary")
        return meta

    def _bad(self, name: str, meta: MetaValue, wanted: str) -> TokenizerError:
        return TokenizerError(f"{self.where}: {PREFIX}{name} is {meta.type}, expected {wanted}")

    def string(self, name: str, required: bool = False) -> str:
        meta = self._get(name, required)
        if meta is None:
            return ""
        if meta.type != "string":
            raise self._bad(name, meta, "string")
        return str(meta.value)

    def strings(self, name: str, required: bool = False) -> list[str]:
        meta = self._get(name, required)
        if meta is None:
            return []
        if meta.type != "array[string]":
            raise self._bad(name, meta, "array[string]")
        return list(meta.value)

    def numbers(self, name: str, n: int, types: tuple[str, ...]) -> np.ndarray[Any, Any] | None:
        meta = self._get(name, False)
        if meta is None:
            return None
        if meta.type not in tuple(f"array[{t}]" for t in types):
            raise self._bad(name, meta, " or ".join(f"array[{t}]" for t in types))
        if len(meta.value) < n:
            raise TokenizerError(f"{self.where}: {PREFIX}{name} has {len(meta.value)} entries for {n} tokens")
        return np.asarray(meta.value[:n])

    def blob(self, name: str) -> bytes | None:
        meta = self._get(name, False)
        if meta is None:
            return None
        if meta.type not in ("array[uint8]", "array[int8]"):
            raise self._bad(name, meta, "array[uint8] or array[int8]")
        return np.asarray(meta.value).astype(np.uint8).tobytes()

    def integer(self, name: str) -> int | None:
        meta = self._get(name, False)
        if meta is None:
            return None
        if meta.type not in _INT_TYPES or not 0 <= int(meta.value) < 2**31:
            raise TokenizerError(f"{self.where}: {PREFIX}{name} must be a token id (an integer from 0), "
                                 f"got {meta.type} {meta.value!r}")
        return int(meta.value)

    def boolean(self, name: str, default: bool) -> bool:
        meta = self._get(name, False)
        if meta is None:
            return default
        if meta.type != "bool":
            raise self._bad(name, meta, "bool")
        return bool(meta.value)
