"""WordPiece as llama.cpp's llm_tokenizer_wpm does it, on vocabularies whose word-initial pieces start with "▁".

The GGUF converter stores a WordPiece vocabulary with "▁" in front of the pieces that start a word and
without the "##" of the pieces that continue one. llama.cpp then:

1. normalises: with `strip_accents`, each character becomes the first character of its canonical
   decomposition (so "é" becomes "e") and combining marks are dropped; with `lowercase`, each character
   takes its simple lowercase mapping (UnicodeData.txt); NUL, U+FFFD and control/format characters go;
2. splits into words at whitespace, and makes every punctuation character, every ASCII symbol and every
   CJK ideograph a word of its own;
3. spells "▁" + word greedily, longest vocabulary piece first from the left; a word with a position no
   piece starts at becomes the unknown token as a whole.

HF `tokenizers` has a WordPiece model and a normaliser made for it; fed this vocabulary (with "▁x" as "x"
and "x" as "##x") it gives llama.cpp's ids on the .inp texts except a word over its 100-character limit,
but its normaliser keeps the whole canonical decomposition and strips only nonspacing marks, where
llama.cpp keeps the first character and strips every mark: Korean syllables and Devanagari vowel signs
come out differently (tests/test_llama_cpp_vocabs.py has such texts). So llama.cpp's steps are written out.
"""

from __future__ import annotations

import unicodedata

from tfb.errors import TokenizerError

_WORD_START = "\u2581"
# llama.cpp's whitespace (scripts/gen-unicode-data.py): ASCII tab to carriage return, space, and Unicode's
_WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                         0x202F, 0x205F, 0x3000])
# llama.cpp's CJK ideograph ranges (with one range start as HF's Rust code has it, 0x2B920)
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cpt: int) -> bool:
    return any(lo <= cpt <= hi for lo, hi in _CJK)


def _simple_lower(ch: str) -> str:
    # Python gives the full mapping; the simple one is its first character (only U+0130 differs)
    low = ch.lower()
    return low if len(low) == 1 else low[0]


class WordPiece:
    """Greedy longest-piece tokenizer over normalised words."""

    def __init__(self, token_to_id: dict[str, int], unk: int | None, lowercase: bool, strip_accents: bool,
                 where: str) -> None:
        self.token_to_id = token_to_id
        self.unk = unk
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.where = where
        self.max_len = max((len(t) for t in token_to_id), default=0)

    def words(self, text: str) -> list[str]:
        """llama.cpp's preprocess: normalised words, punctuation and ideographs standing alone."""
        words = [""]
        for ch in text:
            cpt = ord(ch)
            if self.strip_accents:
                ch = unicodedata.normalize("NFD", ch)[0]
                cpt = ord(ch)
            if cpt in _WHITESPACE:
                if words[-1]:
                    words.append("")
                continue
            category = unicodedata.category(ch)
            if cpt in (0, 0xFFFD) or category in ("Cc", "Cf", "Co", "Cs"):
                continue
            if self.strip_accents and category[0] == "M":
                continue
            if self.lowercase:
                ch = _simple_lower(ch)
            if category[0] == "P" or (cpt < 0x7F and category[0] == "S") or _is_cjk(cpt):
                if words[-1]:
                    words.append("")
                words[-1] = ch
                words.append("")
            else:
                words[-1] += ch
        return [w for w in words if w]

    def tokenize(self, text: str) -> list[int]:
        out: list[int] = []
        lookup = self.token_to_id.get
        for word in self.words(text):
            spelled = _WORD_START + word
            n = len(spelled)
            pieces: list[int] = []
            i = 0
            while i < n:
                for j in range(min(n, i + self.max_len), i, -1):
                    token = lookup(spelled[i:j])
                    if token is not None:
                        pieces.append(token)
                        i = j
                        break
                else:
                    pieces = []
                    break
            if pieces:
                out.extend(pieces)
            else:
                out.append(self._unknown())
        return out

    def _unknown(self) -> int:
        if self.unk is None:
            raise TokenizerError(f"{self.where}: a word has no spelling in the vocabulary and there is no unknown "
                                 "token (tokenizer.ggml.unknown_token_id)")
        return self.unk
