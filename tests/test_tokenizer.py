"""The GGUF tokenizer against llama.cpp: its own test vectors, special tokens, flags and decoding.

Expected ids and texts that are not in the .out files were produced by llama.cpp (llama_tokenize and
llama_detokenize, built from the llama-cpp-python 0.3.36 sources) on the same vocabulary files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vocab_vectors import vectors as read_vectors

from tfb.errors import InputError, TfbError, TokenizerError
from tfb.gguf.reader import GGUFFile, MetaValue
from tfb.text.bpe import MergeBPE
from tfb.text.pretokenizers import PRE_TOKENIZERS
from tfb.text.regex_split import RegexSplitter
from tfb.text.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_metadata

VOCAB_DIR = Path(__file__).parent / "data" / "vocab"
VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
_CACHE: dict[str, Tokenizer] = {}


def tokenizer(name: str) -> Tokenizer:
    if name not in _CACHE:
        _CACHE[name] = load_tokenizer(VOCAB_DIR / f"ggml-vocab-{name}.gguf")
    return _CACHE[name]


def metadata(name: str) -> dict[str, MetaValue]:
    with GGUFFile(VOCAB_DIR / f"ggml-vocab-{name}.gguf") as gguf:
        return dict(gguf.metadata)


def vectors(name: str) -> list[tuple[str, list[int]]]:
    return read_vectors(VOCAB_DIR, name)


# ------------------------------------------------------------------------------------- test vectors


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vectors(name: str) -> None:
    tok = tokenizer(name)
    cases = vectors(name)
    assert len(cases) == 46
    wrong = [(text, tok.encode(text, add_special=False), ids) for text, ids in cases
             if tok.encode(text, add_special=False) != ids]
    assert not wrong, f"{len(wrong)} of {len(cases)} vectors differ, first: {wrong[0]!r}"


@pytest.mark.parametrize("name", VOCABS)
def test_stream_round_trip_of_vectors(name: str) -> None:
    tok = tokenizer(name)
    for text, ids in vectors(name):
        stream = tok.stream()
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        prefix = " " if tok.vocab.add_space_prefix and text else ""
        assert "".join(pieces) == prefix + text
        assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("name", ["llama-spm", "qwen2"])
def test_decode_round_trip_without_space_cleanup(name: str) -> None:
    tok = tokenizer(name)
    assert not tok.vocab.clean_spaces
    for text, ids in vectors(name):
        assert tok.decode(ids) == text


def test_other_pre_tokenizers_match_llama_cpp() -> None:
    """Each distinct pre-tokenizer of the table, run over the gpt-2 vocabulary, against llama.cpp's ids."""
    data = json.loads((VOCAB_DIR / "pre-tokenizers.gpt-2.json").read_text(encoding="utf-8"))
    vocab = tokenizer("gpt-2").vocab
    bpe = {flag: MergeBPE(vocab.token_to_id, vocab.merges, ignore_merges=flag) for flag in (False, True)}
    for name, expected in data["ids"].items():
        pre = PRE_TOKENIZERS[name]
        splitter = RegexSplitter(pre.regexes)
        got = [bpe[pre.ignore_merges].encode_words(splitter.split(text)) for text in data["texts"]]
        assert got == expected, name
    assert len(data["ids"]) >= 25


# ----------------------------------------------------------------------------------- special tokens


def test_special_tokens_parsed_only_when_asked() -> None:
    tok = tokenizer("qwen2")
    text = "<|im_start|>user\nHi<|im_end|>"
    assert tok.encode(text) == [151644, 872, 198, 13048, 151645]
    assert tok.encode(text, add_special=False) == [27, 91, 318, 4906, 91, 29, 872, 198, 13048, 27, 91, 318, 6213,
                                                   91, 29]
    assert tok.encode(text, add_special=False, parse_special=True) == [151644, 872, 198, 13048, 151645]


def test_llama3_chat_prompt_ids() -> None:
    tok = tokenizer("llama-bpe")
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    # add_special adds a BOS even though the text has one, as llama.cpp does (with a warning)
    assert tok.encode(text) == [128000, 128000, 128006, 882, 128007, 271, 13347, 128009]
    assert tok.decode(tok.encode(text), skip_special=True) == "user\n\nHi"


def test_spm_space_prefix_after_special_tokens() -> None:
    tok = tokenizer("llama-spm")
    assert tok.encode("<s>Hi</s> there") == [1, 1, 6324, 2, 29871, 727]
    assert tok.encode("  Hello\n<s>", add_special=True, parse_special=False) == [1, 259, 15043, 13, 29966, 29879,
                                                                                 29958]


def test_user_defined_tokens_always_matched() -> None:
    tok = tokenizer("qwen2")
    pad = tok.vocab.token_to_id["[PAD151646]"]
    assert not tok.is_special(0)
    assert tok.is_special(pad)
    assert tok.encode("a[PAD151646]b", add_special=False) == [tok.encode("a", add_special=False)[0], pad,
                                                              tok.encode("b", add_special=False)[0]]


def synthetic_spm() -> Tokenizer:
    """A small SentencePiece vocabulary with equal scores and a piece built on a character it lacks."""
    pieces = ["▁", "a", "b", "ab", "ba", "aba", "éa", "▁a", "▁ab", "bab"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -5.0, -5.0, -3.0, -4.0, -6.0, -7.0, -5.0]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokenizer_from_metadata({
        "tokenizer.ggml.model": MetaValue("llama", "string"),
        "tokenizer.ggml.tokens": MetaValue(tokens, "array[string]"),
        "tokenizer.ggml.scores": MetaValue(np.array(scores, np.float32), "array[float32]"),
        "tokenizer.ggml.token_type": MetaValue(np.array(types, np.int32), "array[int32]"),
    })


@pytest.mark.parametrize(("text", "pieces"), [
    # expected pieces from llama.cpp on the same vocabulary
    ("ababa", ["▁", "aba", "ba"]),
    ("abab", ["▁", "aba", "b"]),
    ("babab", ["▁", "bab", "ab"]),  # "ab" and "ba" score the same: the leftmost pair merges first
    ("éa", ["▁", "éa"]),  # "é" is no piece, yet "éa" is, and llama.cpp merges it
    ("ébab", ["▁", "<0xC3>", "<0xA9>", "bab"]),
])
def test_spm_merges_like_llama_cpp(text: str, pieces: list[str]) -> None:
    tok = synthetic_spm()
    assert [tok.id_to_piece(i) for i in tok.encode(text, add_special=False)] == pieces
    assert tok.decode(tok.encode(text)) == "<s> " + text


def test_spm_without_byte_tokens_falls_back_to_unknown() -> None:
    tok = tokenizer_from_metadata({
        "tokenizer.ggml.model": MetaValue("llama", "string"),
        "tokenizer.ggml.tokens": MetaValue(["<unk>", "<s>", "</s>", "▁", "a"], "array[string]"),
    })
    assert tok.encode("aé", add_special=False) == [3, 4, 0, 0]


# -------------------------------------------------------------------------------- ids and flags


@pytest.mark.parametrize(("name", "bos", "eos", "eot", "add_bos", "stop"), [
    ("llama-spm", 1, 2, None, True, {2}),
    ("llama-bpe", 128000, 128001, 128009, True, {128001, 128009}),
    ("qwen2", 151643, 151643, 151645, False, {128247, 151643, 151645}),
    ("gpt-2", 50256, 50256, 50256, False, {50256}),
])
def test_special_ids_match_llama_cpp(name: str, bos: int, eos: int, eot: int | None, add_bos: bool,
                                     stop: set[int]) -> None:
    tok = tokenizer(name)
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.add_bos, tok.add_eos) == (bos, eos, eot, add_bos, False)
    assert tok.stop_ids == stop
    assert tok.vocab_size == len(tok.vocab.tokens)


@pytest.mark.parametrize("name", VOCABS)
def test_bos_follows_the_flag(name: str) -> None:
    tok = tokenizer(name)
    ids = tok.encode("Hello")
    assert (ids[0] == tok.bos_id) == tok.add_bos
    assert tok.encode("Hello", add_special=False) == (ids[1:] if tok.add_bos else ids)
    assert tok.encode("") == ([tok.bos_id] if tok.add_bos else [])


def test_flags_from_metadata_override_defaults() -> None:
    meta = metadata("gpt-2")
    meta["tokenizer.ggml.add_bos_token"] = MetaValue(True, "bool")
    meta["tokenizer.ggml.add_eos_token"] = MetaValue(True, "bool")
    tok = tokenizer_from_metadata(meta)
    plain = tokenizer("gpt-2").encode("Hi", add_special=False)
    assert tok.encode("Hi") == [50256, *plain, 50256]
    assert tok.decode(tok.encode("Hi"), skip_special=True) == "Hi"
    meta["tokenizer.ggml.add_bos_token"] = MetaValue(False, "bool")
    assert tokenizer_from_metadata(meta).encode("Hi") == [*plain, 50256]


def test_missing_pre_tokenizer_falls_back_to_default() -> None:
    meta = metadata("gpt-2")
    del meta["tokenizer.ggml.pre"]
    tok = tokenizer_from_metadata(meta)
    assert tok.vocab.pre_name == "default"
    assert tok.encode("Hello world", add_special=False) == tokenizer("gpt-2").encode("Hello world",
                                                                                     add_special=False)


# ----------------------------------------------------------------------------------------- decoding


def test_decode_cleans_spaces_like_llama_cpp() -> None:
    assert tokenizer("gpt-2").decode([17250, 837, 340, 705, 264, 12876, 764]) == "Hi, it's ok."
    tok = tokenizer("llama-bpe")
    ids = [128000, 9906, 1174, 1917, 662, 358, 6, 296, 1618]
    assert tok.decode(ids) == "<|begin_of_text|>Hello, world. I' m here"
    assert tok.decode(ids, skip_special=True) == "Hello, world. I' m here"


def test_spm_decode_keeps_the_space_after_a_removed_bos() -> None:
    tok = tokenizer("llama-spm")
    ids = [1, 259, 15043, 13, 29966, 29879, 29958]
    assert tok.decode(ids) == "<s>   Hello\n<s>"
    assert tok.decode(ids, skip_special=True) == "   Hello\n<s>"
    assert tok.decode(tok.encode("Hello", add_special=False)) == "Hello"


def test_pieces() -> None:
    tok = tokenizer("llama-spm")
    assert tok.id_to_piece(15043) == "▁Hello"
    assert tok.id_to_piece(13) == "<0x0A>"
    assert tok.token_bytes(13) == b"\n"
    assert tok.token_bytes(1) == b"<s>"
    assert tok.token_bytes(1, special=False) == b""


@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("text", ["🦙 llamas", "日本語のテキスト", "emoji 👍🏽 and ZWJ 👩‍👩‍👧", "Ǆ ꙮ 𝔘𝔫𝔦"])
def test_stream_never_splits_a_character(name: str, text: str) -> None:
    tok = tokenizer(name)
    ids = tok.encode(text, add_special=False)
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    tail = stream.flush()
    assert tail == ""
    prefix = " " if tok.vocab.add_space_prefix else ""
    assert "".join(pieces) == prefix + text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_buffers_byte_tokens() -> None:
    tok = tokenizer("llama-spm")
    ids = tok.encode("🦙", add_special=False)
    assert [tok.id_to_piece(i) for i in ids[1:]] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    stream = tok.stream()
    assert [stream.push(i) for i in ids] == [" ", "", "", "", "🦙"]
    # gpt-2 spells the same character as byte-level tokens that end mid-character
    bpe = tokenizer("gpt-2")
    ids = bpe.encode("你好🦙", add_special=False)
    stream = bpe.stream()
    pushed = [stream.push(i) for i in ids]
    assert "".join(pushed) == "你好🦙" and "" in pushed


def test_stream_flushes_an_incomplete_character_as_replacement() -> None:
    tok = tokenizer("llama-spm")
    stream = tok.stream()
    assert stream.push(tok.vocab.token_to_id["<0xF0>"]) == ""
    assert stream.push(tok.vocab.token_to_id["<0x41>"]) == "\ufffdA"
    assert stream.push(tok.vocab.token_to_id["<0xE4>"]) == ""
    assert stream.flush() == "\ufffd"


def test_stream_skips_control_tokens_when_asked() -> None:
    tok = tokenizer("qwen2")
    ids = tok.encode("<|im_start|>Hi<|im_end|>")
    assert "".join(tok.stream().push(i) for i in ids) == "<|im_start|>Hi<|im_end|>"
    assert "".join(tok.stream(skip_special=True).push(i) for i in ids) == "Hi"


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("pre", ["no-such-pre", "kimi-k2"])
def test_unknown_pre_tokenizer_is_named(pre: str) -> None:
    meta = metadata("gpt-2")
    meta["tokenizer.ggml.pre"] = MetaValue(pre, "string")
    with pytest.raises(TokenizerError, match=rf"tokenizer\.ggml\.pre.*{pre}"):
        tokenizer_from_metadata(meta)


def test_spm_ignores_the_pre_tokenizer_name() -> None:
    meta = metadata("llama-spm")
    meta["tokenizer.ggml.pre"] = MetaValue("no-such-pre", "string")
    assert tokenizer_from_metadata(meta).encode("Hi") == tokenizer("llama-spm").encode("Hi")


@pytest.mark.parametrize(("key", "value", "match"), [
    ("tokenizer.ggml.model", MetaValue("rwkv", "string"), "model"),
    ("tokenizer.ggml.tokens", MetaValue(np.zeros(3, np.int32), "array[int32]"), "tokens"),
    ("tokenizer.ggml.bos_token_id", MetaValue("1", "string"), "bos_token_id"),
    ("tokenizer.ggml.add_bos_token", MetaValue(1, "uint8"), "add_bos_token"),
    ("tokenizer.ggml.scores", MetaValue(np.zeros(5, np.float32), "array[float32]"), "scores"),
])
def test_bad_metadata_is_a_tokenizer_error(key: str, value: MetaValue, match: str) -> None:
    meta = metadata("llama-spm")
    meta[key] = value
    with pytest.raises(TokenizerError, match=match):
        tokenizer_from_metadata(meta, "bad.gguf")


def test_missing_vocabulary() -> None:
    meta = metadata("llama-spm")
    del meta["tokenizer.ggml.tokens"]
    with pytest.raises(TokenizerError, match="tokens is missing"):
        tokenizer_from_metadata(meta)


def test_out_of_range_ids_are_input_errors() -> None:
    tok = tokenizer("gpt-2")
    for bad in (-1, tok.vocab_size):
        with pytest.raises(InputError):
            tok.decode([bad])
        with pytest.raises(InputError):
            tok.stream().push(bad)
    with pytest.raises(TfbError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_lone_surrogates_become_replacement_characters() -> None:
    tok = tokenizer("llama-bpe")
    assert tok.encode("a\udcff", add_special=False) == tok.encode("a\ufffd", add_special=False)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not gguf at all")
    with pytest.raises(TfbError):
        load_tokenizer(path)


def test_chat_template_from_the_file() -> None:
    tok = tokenizer("qwen2")
    assert tok.chat_template is not None
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    assert tok.encode_chat([{"role": "user", "content": "Hi"}]) == tok.encode(prompt)
    with pytest.raises(TokenizerError, match="chat template"):
        tokenizer("gpt-2").apply_chat_template([{"role": "user", "content": "Hi"}])


def test_long_text_is_fast() -> None:
    text = " ".join(text for text, _ in vectors("llama-spm")) * 20
    for name in VOCABS:
        ids = tokenizer(name).encode(text, add_special=False)
        assert tokenizer(name).stream() is not None and len(ids) > 1000


def test_space_cleanup_may_remove_the_first_byte() -> None:
    # llama.cpp's second pass drops the space before a lone apostrophe even at the start (its detokenizer
    # turns bert-bge's "▁'" "▁era" into "'era"); the third pass must start from that output
    from tfb.text.detokenize import clean_spaces

    assert clean_spaces(b" ' era") == b"'era"
