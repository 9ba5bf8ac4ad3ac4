"""Unigram tokenization as llama.cpp's llm_tokenizer_ugm does it (its UGM vocabulary type).

Two steps, on each stretch of text between special tokens:

1. Normalise. From each position, the longest user-defined token is kept as it is; otherwise the longest
   key of the file's precompiled character map (`tokenizer.ggml.precompiled_charsmap`, SentencePiece's
   normalisation rules) is replaced by its value; otherwise one character is kept. Spaces then become "▁":
   with `remove_extra_whitespaces`, runs of spaces collapse and leading/trailing ones go, every word
   getting one "▁" in front; with `add_space_prefix`, the text gets one "▁" in front.
2. Viterbi: the spelling of the normalised text as vocabulary pieces whose scores sum highest, where a
   user-defined piece scores 0 and a character no piece starts with costs the lowest normal score minus 10
   as the unknown token (neighbouring unknown tokens are written once). Among equal sums the spelling
   found first wins: pieces ending at a position are tried by start position, then by length.

The character map is a XOR-compressed double array (Kanda 2018), looked up byte by byte: each 32-bit
entry packs BASE (bits 10-30, shifted left by 8 when bit 9 is set), LCHECK (the byte that leads there,
bits 0-7 with bit 31) and LEAF (bit 8); a leaf's value is an offset into the NUL-terminated replacement
strings that follow the array. HF `tokenizers` has a Unigram model and a Precompiled normaliser for the
same map, but the normaliser looks whole grapheme clusters up where llama.cpp takes the longest byte
prefix: halfwidth katakana with sound marks, Hangul jamo sequences and letters with several accents come
out differently (tests/test_llama_cpp_vocabs.py has such texts). So llama.cpp's steps are written out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from tfb.errors import TokenizerError

_SPACE = "\u2581"
_UNKNOWN_PENALTY = 10.0


class CharsMap:
    """The precompiled character map: longest matching prefix -> replacement."""

    def __init__(self, blob: bytes, where: str) -> None:
        bad = TokenizerError(f"{where}: tokenizer.ggml.precompiled_charsmap is malformed (llama.cpp refuses it too)")
        if len(blob) < 4:
            raise bad
        (size,) = struct.unpack_from("<I", blob)
        if size + 4 >= len(blob) or size % 4:
            raise bad
        self.array = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).tolist()
        self.replacements = blob[4 + size:]
        self.bad = bad

    def _node(self, index: int) -> int:
        if index >= len(self.array):
            raise self.bad
        node: int = self.array[index]
        return node

    def _base(self, index: int) -> int:
        node = self._node(index)
        return (node >> 10) << ((node & (1 << 9)) >> 6)

    def longest(self, data: bytes, start: int) -> tuple[int, bytes]:
        """(length of the longest key that `data[start:]` begins with, its replacement); (0, b"") if none."""
        length, offset = 0, 0
        node = self._base(0)
        for pos in range(start, len(data)):
            c = data[pos]
            if c == 0:
                break
            node ^= c
            packed = self._node(node)
            if packed & ((1 << 31) | 0xFF) != c:
                break
            leaf = (packed >> 8) & 1
            node ^= self._base(node)
            if leaf:
                length, offset = pos - start + 1, self._node(node) & ((1 << 31) - 1)
        if not length:
            return 0, b""
        end = self.replacements.find(b"\0", offset)
        if offset >= len(self.replacements) or end < 0:
            raise self.bad
        return length, self.replacements[offset:end]


class Unigram:
    """Normalises text and spells it with the highest-scoring pieces."""

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], matchable: Sequence[bool],
                 user_defined: Sequence[bool], normal: Sequence[bool], unk: int | None, charsmap: CharsMap | None,
                 add_space_prefix: bool, remove_extra_whitespaces: bool, where: str) -> None:
        self.pieces: dict[str, int] = {}
        for i, text in enumerate(tokens):
            if matchable[i]:
                self.pieces[text] = i  # a repeated text is the last of its ids
        self.scores = [0.0 if user_defined[i] else float(s) for i, s in enumerate(scores)]
        self.max_len = max((len(t) for t in self.pieces), default=1)
        self.user_defined = {t.encode("utf-8", "surrogatepass") for i, t in enumerate(tokens) if user_defined[i]}
        self.user_max = max((len(t) for t in self.user_defined), default=0)
        normal_scores = [float(s) for i, s in enumerate(scores) if normal[i]]
        self.unknown_score = (min(normal_scores) if normal_scores else float(np.finfo(np.float32).max)) \
            - _UNKNOWN_PENALTY
        self.unk = unk
        self.charsmap = charsmap
        self.add_space_prefix = add_space_prefix
        self.merge_spaces = remove_extra_whitespaces
        self.where = where

    def normalize(self, text: str) -> str:
        data = text.encode("utf-8", "surrogatepass")
        out: list[str] = []
        in_word = prepended = False
        pos = 0
        while pos < len(data):
            piece, used = self._normalize_prefix(data, pos)
            pos += used
            for ch in piece.decode("utf-8", "replace"):
                if ch != " ":
                    if not in_word:
                        in_word = True
                        if (self.add_space_prefix and not prepended) or self.merge_spaces:
                            out.append(_SPACE)
                            prepended = True
                    out.append(ch)
                else:
                    in_word = False
                    if not self.merge_spaces:
                        out.append(_SPACE)
        return "".join(out)

    def _normalize_prefix(self, data: bytes, pos: int) -> tuple[bytes, int]:
        for size in range(min(self.user_max, len(data) - pos), 0, -1):
            if data[pos:pos + size] in self.user_defined:
                return data[pos:pos + size], size
        if self.charsmap is not None:
            size, replacement = self.charsmap.longest(data, pos)
            if size:
                return replacement, size
        size = _utf8_length(data[pos])
        return data[pos:pos + size], size

    def tokenize(self, text: str) -> list[int]:
        normalized = self.normalize(text)
        n = len(normalized)
        if not n:
            return []
        unk = -1 if self.unk is None else self.unk
        # best[end] = (score sum, start, token) of the best spelling of normalized[:end]
        best: list[tuple[float, int, int]] = [(-float("inf"), 0, unk)] * (n + 1)
        best[0] = (0.0, 0, unk)
        lookup, scores = self.pieces.get, self.scores
        for start in range(n):
            base = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self.max_len) + 1):
                token = lookup(normalized[start:end])
                if token is None:
                    continue
                single = single or end == start + 1
                score = base + scores[token]
                if score > best[end][0]:
                    best[end] = (score, start, token)
            if not single:
                score = base + self.unknown_score
                if score > best[start + 1][0]:
                    best[start + 1] = (score, start, unk)
        out: list[int] = []
        end, previous_unknown = n, False
        while True:
            _, start, token = best[end]
            unknown = token == unk
            if not (previous_unknown and unknown):
                out.append(token)
            if start == 0:
                break
            previous_unknown, end = unknown, start
        out.reverse()
        if -1 in out:
            raise TokenizerError(f"{self.where}: a character has no piece and the vocabulary has no unknown token "
                                 "(tokenizer.ggml.unknown_token_id)")
        return out


def _utf8_length(first: int) -> int:
    # by the high four bits of the first byte, as llama.cpp's unicode_len_utf8
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[first >> 4]
