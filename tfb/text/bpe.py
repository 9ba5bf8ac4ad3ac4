"""BPE over pre-split words, with HF `tokenizers` doing the merging.

llama.cpp maps each byte of a word to a printable character (GPT-2's table), then merges adjacent symbols
by the rank of the pair in `tokenizer.ggml.merges`, lowest rank first and leftmost on a tie; that is
exactly what a `tokenizers` BPE model does, so we build one from the GGUF vocabulary and merges and only
do the word splitting ourselves (see regex_split). llama.cpp keeps the first of repeated merges; a merge
whose parts or result are not in the vocabulary can never apply to a consistent vocabulary and is left out.

Vocabularies whose pre-tokenizer has byte_encode=false merge the UTF-8 characters themselves, with no byte
mapping; a character that ends up outside the vocabulary is written as its bytes' <0xNN> tokens, which is
the model's byte fallback.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tfb.errors import TokenizerError


@lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the rest move above 255."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


def _valid_utf8(text: str) -> bool:
    # the GGUF reader keeps invalid UTF-8 as surrogate escapes; `tokenizers` only takes real strings
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MergeBPE:
    """Merges words (byte-mapped unless `byte_encode` is false) into token ids."""

    def __init__(self, token_to_id: dict[str, int], merges: list[tuple[str, str]], ignore_merges: bool,
                 byte_encode: bool = True) -> None:
        # imported here: only BPE vocabularies need the library, and it takes a while to load
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = {t: i for t, i in token_to_id.items() if _valid_utf8(t)}
        seen: set[tuple[str, str]] = set()
        usable: list[tuple[str, str]] = []
        for a, b in merges:
            if (a, b) not in seen and a in vocab and b in vocab and a + b in vocab:
                seen.add((a, b))
                usable.append((a, b))
        try:
            model = models.BPE(vocab=vocab, merges=usable, ignore_merges=ignore_merges, fuse_unk=False,
                               byte_fallback=not byte_encode)
        except Exception as e:  # the library reports bad input as plain exceptions
            raise TokenizerError(f"cannot build the BPE model from tokenizer.ggml.tokens/merges: {e}") from None
        self._tokenizer: Any = Tokenizer(model)
        if byte_encode:
            # words arrive already split; this step only maps bytes to GPT-2's characters
            self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def encode_words(self, words: list[str]) -> list[int]:
        if not words:
            return []
        return list(self._tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False).ids)
