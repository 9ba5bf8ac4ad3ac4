"""Every vocabulary file llama.cpp ships for its tokenizer tests, against llama.cpp's expected ids.

The files come from the pinned llama-cpp-python sdist (tools/llama_cpp.py `vocab_dir`, extracted once into
the cache): models/ggml-vocab-NAME.gguf, and for most of them NAME.gguf.inp (texts separated by a marker
line) and NAME.gguf.out (llama.cpp's ids, one line per text). Like llama.cpp's tests/test-tokenizer-0, each
text is tokenized without BOS/EOS and without parsing special tokens, and the ids must be equal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFValueType, GGUFWriter

from tfb.errors import TokenizerError
from tfb.gguf.reader import GGUFFile, MetaValue
from tfb.text.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_metadata
from tfb.text.wpm import WordPiece

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from llama_cpp import vocab_dir  # tools/llama_cpp.py, not the package
from llama_reference import llama_cpp_tokenize
from vocab_vectors import vectors

# the files that carry .inp/.out test vectors, and those that carry none
WITH_VECTORS = ["bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
                "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]
WITHOUT_VECTORS = ["aquila", "baichuan", "gpt-neox", "nomic-bert-moe"]
_CACHE: dict[str, Tokenizer] = {}


@pytest.fixture(scope="module")
def vocabs() -> Iterator[Path]:
    yield vocab_dir()
    _CACHE.clear()  # all the vocabularies together hold about a gigabyte: not for the rest of the suite


def tokenizer(directory: Path, name: str) -> Tokenizer:
    if name not in _CACHE:
        _CACHE[name] = load_tokenizer(directory / f"ggml-vocab-{name}.gguf")
    return _CACHE[name]


def test_the_list_is_every_shipped_file(vocabs: Path) -> None:
    shipped = {p.name[len("ggml-vocab-"):-len(".gguf")] for p in vocabs.glob("ggml-vocab-*.gguf")}
    with_vectors = {p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocabs.glob("ggml-vocab-*.gguf.inp")}
    assert shipped == set(WITH_VECTORS) | set(WITHOUT_VECTORS)
    assert with_vectors == set(WITH_VECTORS)


@pytest.mark.parametrize("name", WITH_VECTORS)
def test_ids_match_llama_cpp(vocabs: Path, name: str) -> None:
    tok = tokenizer(vocabs, name)
    cases = vectors(vocabs, name)
    assert len(cases) >= 46
    wrong = [(text, got, ids) for text, ids in cases
             if (got := tok.encode(text, add_special=False, parse_special=False)) != ids]
    assert not wrong, f"{len(wrong)} of {len(cases)} vectors differ, first (text, tfb, llama.cpp): {wrong[0]!r}"


@pytest.mark.parametrize("name", [n for n in WITH_VECTORS if n != "bert-bge"])
def test_pieces_spell_the_text(vocabs: Path, name: str) -> None:
    """The pieces of llama.cpp's ids, streamed, give the text back (with SentencePiece's leading space)."""
    tok = tokenizer(vocabs, name)
    prefix = " " if tok.vocab.add_space_prefix else ""
    for text, ids in vectors(vocabs, name):
        stream = tok.stream()
        assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == (prefix + text if text else "")


# texts beyond the .inp files: special-token texts of several vocabularies, Unicode spaces, controls,
# runs of spaces, characters that normalise (full-width, ligatures, combining accents) and unknown ones
EXTRA_TEXTS = ["Hello  world \u0fff 🦙", "x\n\n\ny", "<bos>hi<eos> there", "<s>a</s>", "[CLS] x [SEP]", "\n\n\n\n",
               "  lead", "a\u00a0b\u3000c", "Ünïcödé ÀÉÎ straße ﬁ ℌ ①", "\t tab\r\nx", "\x00\x01 ctrl", "",
               "a   b  ", "   lead and trail   ", "ＡＢＣ１２３\u3000x", "\ue000\ue001 pua 𠀋𠀋 x", "e\u0301 café",
               "<mask> x<mask>y", "<unk>", "\u2581 ▁▁x", " \n \n\t x", "한국어 텍스트", "हिन्दी किताब", "ñandú Ωmega",
               "İstanbul ǅ x\u200bz \u00ad", "a" * 150, "ﾊﾞﾅﾅ ｶﾞｷﾞ", "\u1112\u1161\u11ab \u1100\u1161\u11a8\u11a8",
               "a\u0308\u0301 \u00a8\u0301 ǅ\u0301 \u2126\u0301 \u1e9b\u0323", "Ⅻ ㍿ ﬃ"]


@pytest.mark.parametrize("name", [*WITHOUT_VECTORS, "gemma-4", "bert-bge"])
def test_special_tokens_and_decoding_match_llama_cpp(vocabs: Path, name: str) -> None:
    """With BOS/EOS added and special tokens parsed (and for files without vectors), ids and decoded text
    against llama.cpp run on the same file."""
    tok = tokenizer(vocabs, name)
    texts = [text for text, _ in vectors(vocabs, "qwen35")] + EXTRA_TEXTS
    ids, decoded, plain = llama_cpp_tokenize(vocabs / f"ggml-vocab-{name}.gguf", texts, add_special=True,
                                             parse_special=True)
    wrong = [(text, got, want) for text, want in zip(texts, ids, strict=True)
             if (got := tok.encode(text, add_special=True, parse_special=True)) != want]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts differ, first (text, tfb, llama.cpp): {wrong[0]!r}"
    for skip, expected in ((False, decoded), (True, plain)):
        wrong = [(i, got, want) for i, want in zip(ids, expected, strict=True)
                 if (got := tok.decode(i, skip_special=skip)) != want]
        assert not wrong, f"{len(wrong)} decodings differ (skip_special={skip}), first: {wrong[0]!r}"


# ------------------------------------------------------------------------------------------ gemma4


def test_gemma4_spells_missing_characters_as_bytes(vocabs: Path) -> None:
    tok = tokenizer(vocabs, "gemma-4")
    ids = tok.encode("a \u0fff")  # U+0FFF is no piece: its UTF-8 bytes become <0xNN> tokens
    assert [tok.id_to_piece(i) for i in ids[-3:]] == ["<0xE0>", "<0xBF>", "<0xBF>"]
    assert tok.decode(ids, skip_special=True) == "a \u0fff"


# ------------------------------------------------------------------------- flags the shipped files leave out


def rewrite(source: Path, out: Path, changes: dict[str, Callable[[Any], Any]]) -> Path:
    """A copy of a vocabulary file with some values changed (key -> old value -> new value; a key the file
    lacks is added as a string or a bool)."""
    with GGUFFile(source) as gguf:
        metadata = dict(gguf.metadata)
    writer = GGUFWriter(str(out), str(metadata.pop("general.architecture").value))
    for key, change in changes.items():
        old = metadata.get(key)
        value = change(None if old is None else old.value)
        metadata[key] = MetaValue(value, old.type if old else "string" if isinstance(value, str) else "bool")
    for key, meta in metadata.items():
        if meta.type.startswith("array["):
            writer.add_key_value(key, list(meta.value), GGUFValueType.ARRAY,
                                 sub_type=GGUFValueType[meta.type[len("array["):-1].upper()])
        else:
            writer.add_key_value(key, meta.value, GGUFValueType[meta.type.upper()])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _no_newline_merges(merges: list[str]) -> list[str]:
    return [m for m in merges if m.replace("\n", "").strip() != ""]


VARIANTS: dict[str, tuple[str, dict[str, Callable[[Any], Any]]]] = {
    # without merges between newlines, only the rule that keeps a newline run whole gives its token; the
    # model value fixes the pre-tokenizer and BOS whatever the file says
    "gemma4-without-newline-merges": ("gemma-4", {"tokenizer.ggml.merges": _no_newline_merges,
                                                  "tokenizer.ggml.add_bos_token": lambda _: False,
                                                  "tokenizer.ggml.pre": lambda _: "gpt-2"}),
    # the same vocabulary as a gpt2 model with the other pre-tokenizer that merges UTF-8 text with "▁" for
    # spaces (no newline rule, no forced BOS, no space clean-up)
    "gpt2-sarvam-moe": ("gemma-4", {"tokenizer.ggml.model": lambda _: "gpt2",
                                    "tokenizer.ggml.pre": lambda _: "sarvam-moe"}),
    "wordpiece-cased": ("bert-bge", {"tokenizer.ggml.normalizer.lowercase": lambda _: False}),
    "wordpiece-accents-kept": ("bert-bge", {"tokenizer.ggml.normalizer.strip_accents": lambda _: False}),
    "unigram-spaces-kept": ("nomic-bert-moe", {"tokenizer.ggml.remove_extra_whitespaces": lambda _: False,
                                               "tokenizer.ggml.add_space_prefix": lambda _: False}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_flag_variants_match_llama_cpp(vocabs: Path, tmp_path: Path, variant: str) -> None:
    name, changes = VARIANTS[variant]
    path = rewrite(vocabs / f"ggml-vocab-{name}.gguf", tmp_path / f"{variant}.gguf", changes)
    tok = load_tokenizer(path)
    texts = [text for text, _ in vectors(vocabs, "qwen35")] + EXTRA_TEXTS + ["a\n\n\n\nb\n\n", "É Ñ ÀÉÎ Straße"]
    ids, _, plain = llama_cpp_tokenize(path, texts, add_special=True, parse_special=True)
    wrong = [(text, got, want) for text, want in zip(texts, ids, strict=True)
             if (got := tok.encode(text, add_special=True, parse_special=True)) != want]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts differ, first (text, tfb, llama.cpp): {wrong[0]!r}"
    wrong = [(i, got, want) for i, want in zip(ids, plain, strict=True)
             if (got := tok.decode(i, skip_special=True)) != want]
    assert not wrong, f"{len(wrong)} decodings differ, first: {wrong[0]!r}"


# ------------------------------------------------------------------------------------------- errors


def metadata(directory: Path, name: str) -> dict[str, MetaValue]:
    with GGUFFile(directory / f"ggml-vocab-{name}.gguf") as gguf:
        return dict(gguf.metadata)


@pytest.mark.parametrize(("name", "key", "value", "match"), [
    ("nomic-bert-moe", "tokenizer.ggml.precompiled_charsmap", MetaValue(np.zeros(3, np.uint8), "array[uint8]"),
     r"precompiled_charsmap is malformed"),
    ("nomic-bert-moe", "tokenizer.ggml.precompiled_charsmap", MetaValue(np.zeros(8, np.float32), "array[float32]"),
     r"precompiled_charsmap is array\[float32\], expected array\[uint8\]"),
    ("gemma-4", "tokenizer.ggml.merges", None, r"merges is missing"),
    ("bert-bge", "tokenizer.ggml.normalizer.lowercase", MetaValue(1, "uint8"), r"normalizer\.lowercase is uint8"),
])
def test_bad_values_are_one_clear_error(vocabs: Path, name: str, key: str, value: MetaValue | None,
                                        match: str) -> None:
    meta = metadata(vocabs, name)
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    with pytest.raises(TokenizerError, match=match):
        tokenizer_from_metadata(meta, "bad.gguf")


def test_wordpiece_without_unknown_token_says_so(vocabs: Path) -> None:
    vocab = tokenizer(vocabs, "bert-bge").vocab
    wordpiece = WordPiece(vocab.token_to_id, None, lowercase=True, strip_accents=True, where="bad.gguf")
    assert wordpiece.tokenize("Hello") == tokenizer(vocabs, "bert-bge").encode("Hello", add_special=False)
    with pytest.raises(TokenizerError, match=r"bad\.gguf: .*unknown_token_id"):
        wordpiece.tokenize("\u0fff")
