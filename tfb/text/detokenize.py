"""Token ids back to bytes and text, as llama.cpp's token_to_piece and detokenize do it.

A piece is bytes, not text: a byte-fallback token or a byte-level BPE token can hold part of a UTF-8
character. `Detokenizer` therefore feeds pieces through an incremental UTF-8 decoder and hands out only
complete characters, keeping an incomplete tail for the next token.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable

from tfb.text.bpe import char_to_byte
from tfb.text.vocab import Attr, Kind, Vocab

_HIDDEN_UNLESS_SPECIAL = Attr.UNKNOWN | Attr.CONTROL
_SPACE = "\u2581"  # SentencePiece's "▁"


class Pieces:
    """piece_bytes with a cache: decoding looks the same few thousand tokens up again and again."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._cache: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})

    def get(self, token: int, special: bool) -> bytes:
        cache = self._cache[special]
        piece = cache.get(token)
        if piece is None:
            piece = cache[token] = piece_bytes(self.vocab, token, special)
        return piece


def piece_bytes(vocab: Vocab, token: int, special: bool) -> bytes:
    """The bytes token `token` stands for; control and unknown tokens give their text only when `special`."""
    attr = vocab.attrs[token]
    text = vocab.tokens[token]
    if attr & _HIDDEN_UNLESS_SPECIAL and not special:
        return b""
    if attr & (_HIDDEN_UNLESS_SPECIAL | Attr.USER_DEFINED):
        return _raw(text)
    if attr & Attr.NORMAL:
        if vocab.kind is Kind.BPE and (vocab.pre is None or not vocab.pre.escape_spaces):
            return _byte_level(text)
        return _raw(text.replace(_SPACE, " "))
    if attr & Attr.BYTE:
        return bytes([int(text[3:5], 16)])
    return b""  # unused and undefined tokens are written as nothing


def _raw(text: str) -> bytes:
    # surrogate escapes stand for the invalid UTF-8 bytes the file really holds
    return text.encode("utf-8", "surrogateescape")


def _byte_level(text: str) -> bytes:
    table = char_to_byte()
    out = bytearray()
    for ch in text:
        if ch in table:
            out.append(table[ch])
        else:  # not a byte-level character: llama.cpp writes this marker
            out += f"[UNK_BYTE_0x{_raw(ch).hex()}{text}]".encode("utf-8", "surrogateescape")
    return bytes(out)


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean-up of tokenizer spaces: " ?" " !" " ." " ," lose the space, " ' " loses both, and
    " 's", " 'm", " 're", " 've" lose the space before the apostrophe."""
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    text = bytes(out)
    out = bytearray(text[:1])
    marks = bytearray(text)  # a space taken after an apostrophe no longer counts as one
    i = 1
    while i < len(marks):
        x = marks[i]
        if x == 0x27 and i + 1 < len(marks) and marks[i - 1] == 0x20 and marks[i + 1] == 0x20:
            out.pop()
            marks[i + 1] = 0
            i += 1
        out.append(x)
        i += 1
    text = bytes(out)  # the pass before may have removed the first byte: start from its output
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        x = text[i]
        if text[i - 1] == 0x20 and x == 0x27 and i + 1 < len(text):
            after = text[i + 1:i + 3]
            if after[:1] in (b"s", b"m") or (len(after) == 2 and after in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)


def detokenize(pieces: Pieces, ids: Iterable[int], skip_special: bool) -> str:
    """Text of `ids` as llama.cpp's llama_detokenize(remove_special=skip_special, unparse_special=not
    skip_special) gives it: one leading space of the first piece dropped where the vocabulary adds one,
    the BOS/EOS that encoding adds dropped when skipping special tokens, then the space clean-up."""
    vocab = pieces.vocab
    tokens = list(ids)
    remove_space = vocab.add_space_prefix
    if skip_special and vocab.add_bos and tokens and tokens[0] == vocab.ids["bos"]:
        remove_space = False  # llama.cpp keeps the space that follows a removed BOS
        tokens = tokens[1:]
    if skip_special and vocab.add_eos and tokens and tokens[-1] == vocab.ids["eos"]:
        tokens = tokens[:-1]
    out = bytearray()
    for k, token in enumerate(tokens):
        piece = pieces.get(token, special=not skip_special)
        if k == 0 and remove_space and piece[:1] == b" ":
            piece = piece[1:]
        out += piece
    text = clean_spaces(bytes(out)) if vocab.clean_spaces else bytes(out)
    return text.decode("utf-8", "replace")


class Detokenizer:
    """Streaming decoder: `push(id)` returns the text completed by that token, `flush()` the rest.

    No character is ever split: the bytes of a character spread over several tokens come out together
    with the last of them. Bytes that cannot start or continue a character come out as U+FFFD.
    """

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token: int) -> str:
        return str(self._decoder.decode(self._piece(token)))

    def flush(self) -> str:
        text = str(self._decoder.decode(b"", final=True))
        self._decoder.reset()
        return text
