"""Cutting special tokens out of the input text before it is tokenized (llama.cpp's tokenizer_st_partition).

Every control, user-defined and unknown token is searched for as literal text, longest text first; each
occurrence becomes that token and the text around it is split further by the next token. Control and
unknown tokens are only looked for when special tokens are parsed; user-defined ones always are.
"""

from __future__ import annotations

from dataclasses import dataclass

Fragment = str | int  # raw text still to tokenize, or a token id already decided


@dataclass(frozen=True)
class SpecialToken:
    text: str
    id: int
    always: bool  # matched even when special tokens are not parsed (user-defined tokens)


def sort_specials(specials: list[SpecialToken]) -> list[SpecialToken]:
    # longest first so that "<|im_start|>" wins over a shorter token inside it; ties by id for determinism
    return sorted(specials, key=lambda s: (-len(s.text), s.id))


def partition(text: str, specials: list[SpecialToken], parse_special: bool) -> list[Fragment]:
    """Split `text` into raw-text fragments and special-token ids, in order."""
    fragments: list[Fragment] = [text] if text else []
    for special in specials:
        if not (parse_special or special.always) or special.text not in text:
            continue
        cut: list[Fragment] = []
        for fragment in fragments:
            if isinstance(fragment, int) or special.text not in fragment:
                cut.append(fragment)
                continue
            pieces = fragment.split(special.text)
            for k, piece in enumerate(pieces):
                if k:
                    cut.append(special.id)
                if piece:
                    cut.append(piece)
        fragments = cut
    return fragments
