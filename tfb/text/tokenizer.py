"""`load_tokenizer(path)`: the tokenizer stored in a GGUF file's metadata, giving llama.cpp's token ids.

    tok = load_tokenizer("model.gguf")            # vocabulary-only files work too
    ids = tok.encode("Hello")                      # BOS/EOS as the file asks, special tokens parsed
    text = tok.decode(ids, skip_special=True)
    stream = tok.stream(); text = stream.push(i)   # never emits half a character
    prompt = tok.apply_chat_template(messages)     # the file's own chat template, sandboxed
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tfb.errors import InputError, TokenizerError
from tfb.gguf.reader import GGUFFile, MetaValue
from tfb.text.bpe import MergeBPE
from tfb.text.chat_template import render_chat_template
from tfb.text.detokenize import Detokenizer, Pieces, detokenize
from tfb.text.regex_split import RegexSplitter
from tfb.text.special import SpecialToken, partition, sort_specials
from tfb.text.spm import ScoreMerger
from tfb.text.ugm import CharsMap, Unigram
from tfb.text.vocab import ID_KEYS, SPECIAL_ATTRS, Attr, Kind, Vocab, read_vocab
from tfb.text.wpm import WordPiece

_SURROGATES = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Text <-> token ids for one vocabulary, matching llama.cpp's llama_tokenize/llama_detokenize."""

    def __init__(self, vocab: Vocab, where: str = "<vocab>") -> None:
        self.vocab = vocab
        self.where = where
        self._pieces = Pieces(vocab)
        flags = [int(a) for a in vocab.attrs]  # plain ints: IntFlag operations are slow over 250k tokens
        special, hidden = int(SPECIAL_ATTRS), int(Attr.CONTROL | Attr.UNKNOWN)
        self._specials = sort_specials([SpecialToken(vocab.tokens[i], i, not a & hidden)
                                        for i, a in enumerate(flags) if a & special])
        if vocab.kind is Kind.SPM:
            self._spm = ScoreMerger(vocab.token_to_id, vocab.scores, self._byte_token)
        elif vocab.kind is Kind.WPM:
            self._wpm = WordPiece(vocab.token_to_id, vocab.ids["unk"], vocab.lowercase, vocab.strip_accents, where)
        elif vocab.kind is Kind.UGM:
            normal_bit, user_bit, unused_bit = int(Attr.NORMAL), int(Attr.USER_DEFINED), int(Attr.UNUSED)
            normal = [bool(a & normal_bit) for a in flags]
            user = [bool(a & user_bit) for a in flags]
            matchable = [bool(a & (normal_bit | user_bit | unused_bit)) for a in flags]
            charsmap = CharsMap(vocab.charsmap, where) if vocab.charsmap else None
            self._ugm = Unigram(vocab.tokens, vocab.scores, matchable, user, normal, vocab.ids["unk"], charsmap,
                                vocab.add_space_prefix, vocab.remove_extra_whitespaces, where)
        else:
            assert vocab.pre is not None
            self._splitter = RegexSplitter(vocab.pre.regexes)
            self._bpe = MergeBPE(vocab.token_to_id, vocab.merges, vocab.ignore_merges, vocab.pre.byte_encode)

    # ------------------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        return len(self.vocab.tokens)

    @property
    def bos_id(self) -> int | None:
        return self.vocab.ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.ids["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.vocab.ids["eot"]

    @property
    def eom_id(self) -> int | None:
        return self.vocab.ids["eom"]

    @property
    def unk_id(self) -> int | None:
        return self.vocab.ids["unk"]

    @property
    def pad_id(self) -> int | None:
        return self.vocab.ids["pad"]

    @property
    def stop_ids(self) -> frozenset[int]:
        """Every id that ends generation: EOS, EOT, EOM and the end markers llama.cpp knows by text."""
        return self.vocab.stop_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def chat_template(self) -> str | None:
        return self.vocab.chat_template

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        """Use another template than the file's (or one where the file has none)."""
        self.vocab.chat_template = template

    # ----------------------------------------------------------------------------------------- encode

    def encode(self, text: str, add_special: bool = True, parse_special: bool | None = None) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS/EOS as the file's flags ask and, unless
        `parse_special` says otherwise, turns special-token texts such as "<|im_start|>" into their ids."""
        if not isinstance(text, str):
            raise InputError(f"encode() takes a str, got {type(text).__name__}")
        parse = add_special if parse_special is None else parse_special
        # a lone surrogate has no UTF-8 form; llama.cpp reads such bytes as U+FFFD
        text = _SURROGATES.sub("\ufffd", text)
        fragments = partition(text, self._specials, parse)
        out: list[int] = []
        if self.vocab.kind is Kind.WPM:
            # llama.cpp frames WordPiece text with BOS (the [CLS] token) and SEP whatever the flags say
            if add_special:
                out.append(self._required("bos", "encoding WordPiece text with add_special"))
            out.extend(t for f in fragments for t in ([f] if isinstance(f, int) else self._wpm.tokenize(f)))
            if add_special:
                out.append(self._required("sep", "encoding WordPiece text with add_special"))
            return out
        if add_special and self.vocab.add_bos:
            out.append(self._required("bos", "tokenizer.ggml.add_bos_token"))
        if self.vocab.kind is Kind.SPM:
            self._encode_spm(fragments, out)
        elif self.vocab.kind is Kind.UGM:
            out.extend(t for f in fragments for t in ([f] if isinstance(f, int) else self._ugm.tokenize(f)))
        else:
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                else:
                    self._encode_bpe(fragment, out)
        if add_special and self.vocab.add_eos:
            out.append(self._required("eos", "tokenizer.ggml.add_eos_token"))
        return out

    def _encode_spm(self, fragments: Sequence[str | int], out: list[int]) -> None:
        # the space prefix goes before the first text and before text that follows a special token
        after_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                after_special = True
                continue
            if self.vocab.add_space_prefix and after_special:
                fragment = " " + fragment
            out.extend(self._spm.tokenize(fragment.replace(" ", "\u2581")))
            after_special = False

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        pre = self.vocab.pre
        assert pre is not None
        if pre.escape_spaces:
            text = text.replace(" ", "\u2581")
        words = self._splitter.split(text)
        if not pre.newline_runs_whole:
            out.extend(self._bpe.encode_words(words))
            return
        # a run of newlines that is a token stays one token (merging could split it differently)
        pending: list[str] = []
        for word in words:
            token = self.vocab.token_to_id.get(word) if not word.strip("\n") else None
            if token is None:
                pending.append(word)
                continue
            out.extend(self._bpe.encode_words(pending))
            out.append(token)
            pending = []
        out.extend(self._bpe.encode_words(pending))

    def _byte_token(self, byte: int) -> int:
        # llama.cpp looks for <0xNN>, then for a token that is that single byte (and fails without one; the
        # unknown token, where there is one, is kinder)
        to_id = self.vocab.token_to_id
        token = to_id.get(f"<0x{byte:02X}>", to_id.get(bytes([byte]).decode("utf-8", "surrogateescape")))
        if token is None:
            token = self.vocab.ids["unk"]
        if token is None:
            raise TokenizerError(f"{self.where}: the vocabulary has no byte token <0x{byte:02X}> for a character "
                                 "it cannot spell")
        return token

    def _required(self, role: str, why: str) -> int:
        token = self.vocab.ids[role]
        if token is None:
            raise TokenizerError(f"{self.where}: {why} needs a {role.upper()} token but the vocabulary has none "
                                 f"(tokenizer.ggml.{ID_KEYS[role]})")
        return token

    # ----------------------------------------------------------------------------------------- decode

    def _check(self, token: int) -> int:
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < self.vocab_size:
            raise InputError(f"token id {token!r} is outside the vocabulary (0..{self.vocab_size - 1})")
        return token

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` as llama.cpp's detokenizer gives it (see tfb.text.detokenize.detokenize)."""
        return detokenize(self._pieces, [self._check(int(i)) for i in ids], skip_special)

    def id_to_piece(self, token: int) -> str:
        """The vocabulary entry of `token`, as stored (e.g. "▁Hello", "Ġworld", "<0x0A>")."""
        return self.vocab.tokens[self._check(token)]

    def token_bytes(self, token: int, special: bool = True) -> bytes:
        """The bytes `token` stands for in decoded text (possibly part of a character)."""
        return self._pieces.get(self._check(token), special)

    def stream(self, skip_special: bool = False) -> Detokenizer:
        """A streaming decoder for generated ids: push(id) -> complete text so far, flush() -> the rest."""
        return Detokenizer(lambda token: self.token_bytes(token, special=not skip_special))

    def is_special(self, token: int) -> bool:
        """Whether `token` is a control, user-defined or unknown token (matched whole in parsed text)."""
        return bool(self.vocab.attrs[self._check(token)] & SPECIAL_ATTRS)

    # ----------------------------------------------------------------------------------- chat template

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        """Render the file's chat template with bos_token/eos_token taken from the vocabulary."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.where}: the file has no chat template (tokenizer.chat_template)")
        names = {"bos_token": self.bos_id, "eos_token": self.eos_id}
        defaults = {k: self.vocab.tokens[i] if i is not None else "" for k, i in names.items()}
        return render_chat_template(self.chat_template, messages, add_generation_prompt, **{**defaults, **variables})

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **variables: Any) -> list[int]:
        """Ids of the rendered chat, as llama.cpp builds them: a BOS text the template wrote is replaced by
        the BOS the vocabulary adds (so there is one), and special-token texts become their ids."""
        prompt = self.apply_chat_template(messages, add_generation_prompt, **variables)
        bos = self.bos_id
        if self.add_bos and bos is not None and prompt.startswith(self.vocab.tokens[bos]):
            prompt = prompt[len(self.vocab.tokens[bos]):]
        eos = self.eos_id
        if self.add_eos and eos is not None and prompt.endswith(self.vocab.tokens[eos]):
            prompt = prompt[:-len(self.vocab.tokens[eos])]
        return self.encode(prompt, add_special=True, parse_special=True)


def load_tokenizer(path: str | Path, vocab_pre: str | None = None) -> Tokenizer:
    """The tokenizer of a GGUF file (a full model or a vocabulary-only file), or of a checkpoint directory
    (its tokenizer.json, read as the converter would write it; `vocab_pre` names the pre-tokenizer of one whose
    fingerprint the converter does not know)."""
    if Path(path).is_dir():
        from tfb.sources.checkpoint import checkpoint_tokenizer_metadata

        return tokenizer_from_metadata(checkpoint_tokenizer_metadata(Path(path), vocab_pre), str(path))
    with GGUFFile(path) as gguf:
        metadata: Mapping[str, MetaValue] = gguf.metadata
    return tokenizer_from_metadata(metadata, str(path))


def tokenizer_from_metadata(metadata: Mapping[str, MetaValue], where: str = "<metadata>") -> Tokenizer:
    """The tokenizer described by already-read GGUF metadata (`where` names it in errors)."""
    return Tokenizer(read_vocab(metadata, where), where)
