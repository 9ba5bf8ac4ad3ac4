"""A checkpoint's tokenizer as the GGUF `tokenizer.*` keys llama.cpp's converter writes for a byte-level BPE
tokenizer.json (its `_set_vocab_gpt2`): tokens in id order (ids the vocabulary lacks up to config.json's
vocab_size as `[PAD{i}]`, UNUSED), their types (added tokens CONTROL when special or when their text looks
special, else USER_DEFINED; the rest NORMAL), the pre-tokenizer name found by the converter's fingerprint
(tfb/text/pre_hashes.json), and merges, special token ids, add-BOS/EOS flags and the chat template as gguf-py's
SpecialVocab reads them from tokenizer.json, tokenizer_config.json and chat_template.jinja.

The tokenizer.json is read with the HF `tokenizers` library; the keys then serve tfb's own tokenizer (the ids
llama.cpp gives on the converted file) and `tfb convert`.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tfb.errors import TokenizerError
from tfb.gguf.reader import MetaValue
from tfb.text.pretokenizers import TOKENIZER_MODELS

TOKENIZER_JSON = "tokenizer.json"
# the `tokenizer.ggml.model` value of byte-level BPE vocabularies
BPE_MODEL = next(name for name, algorithm in TOKENIZER_MODELS.items() if algorithm == "bpe")
# gguf.TokenType values
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _fingerprints() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("tfb.text").joinpath("pre_hashes.json").read_text("utf-8"))
    return data


def _looks_special(text: str) -> bool:
    """The converter's rule for added tokens that should be control tokens though not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def pre_tokenizer_name(tokenizer: Any, where: Path) -> str:
    """The name the converter's fingerprint table gives this tokenizer's pre-tokenization, or a refusal."""
    table = _fingerprints()
    ids = tokenizer.encode(table["text"], add_special_tokens=True).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    name = table["hashes"].get(digest)
    if name is None:
        raise TokenizerError(f"{where}: the BPE pre-tokenizer is not one llama.cpp's converter knows (fingerprint "
                             f"{digest[:16]}...); as the converter does, tfb refuses to guess it. If you know which it "
                             "is, pass --vocab-pre NAME (vocab_pre=NAME): NAME is written as tokenizer.ggml.pre "
                             "(a `tokenizer.ggml.pre` value llama.cpp knows: see tfb/text/pretokenizers.json)")
    return str(name)


def tokenizer_metadata(directory: Path, vocab_size: int | None, vocab_pre: str | None = None) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys for a checkpoint directory with a byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer

    path = directory / TOKENIZER_JSON
    if not path.is_file():
        raise TokenizerError(f"{directory}: no {TOKENIZER_JSON}: tfb reads checkpoint tokenizers from it (a "
                             "SentencePiece tokenizer.model alone is not read; convert with llama.cpp's "
                             "convert_hf_to_gguf.py)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library's errors are plain exceptions
        raise TokenizerError(f"{path}: not a tokenizer the `tokenizers` library reads: {e}") from None
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: model type {model.get('type')!r}: tfb reads byte-level BPE tokenizer.json "
                             "files only")
    vocab = tok.get_vocab(with_added_tokens=True)
    size = vocab_size if vocab_size is not None else len(vocab)
    if max(vocab.values(), default=0) >= size:
        raise TokenizerError(f"{path}: token id {max(vocab.values())} is past config.json's vocab_size {size}")
    pre = vocab_pre or pre_tokenizer_name(tok, path)
    by_id = {i: t for t, i in vocab.items()}
    added = {i: (t.special, t.normalized) for i, t in tok.get_added_tokens_decoder().items()}
    for text in configured_specials(directory):  # transformers adds these as special tokens
        if text in vocab:
            added[vocab[text]] = (True, added.get(vocab[text], (True, False))[1])
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        text = by_id[i]
        if i in added:
            special, normalized = added[i]
            if not normalized:  # as the converter: the text as encoding and decoding gives it back
                text = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            if special or _looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(text)
    out = {"tokenizer.ggml.model": MetaValue(BPE_MODEL, "string"), "tokenizer.ggml.pre": MetaValue(pre, "string"),
           "tokenizer.ggml.tokens": MetaValue(tokens, "array[string]"),
           "tokenizer.ggml.token_type": MetaValue(np.asarray(types, dtype=np.int32), "array[int32]")}
    out.update(special_metadata(directory, len(tokens)))
    return out


def configured_specials(directory: Path) -> list[str]:
    """The special tokens tokenizer_config.json names (bos_token... and additional_special_tokens)."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(config, dict):
        return []
    found: list[Any] = [config.get(f"{role}_token") for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")]
    extra = config.get("additional_special_tokens")
    found += extra if isinstance(extra, list) else []
    texts = [t.get("content") if isinstance(t, dict) else t for t in found]
    return [t for t in texts if isinstance(t, str)]


def special_metadata(directory: Path, n_vocab: int) -> dict[str, MetaValue]:
    """Merges, special ids, add flags and chat template, as gguf-py's SpecialVocab writes them."""
    from gguf import GGUFWriter, SpecialVocab

    writer = GGUFWriter(path=None, arch="none")
    SpecialVocab(directory, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return {key: as_meta(value) for key, value in writer.kv_data[0].items() if key.startswith("tokenizer.")}


def as_meta(value: Any) -> MetaValue:
    """A gguf-py GGUFValue as a MetaValue."""
    kind = value.type.name.lower()
    if kind != "array":
        return MetaValue(value.value, kind)
    inner = value.sub_type.name.lower() if value.sub_type is not None else "string"
    items = list(value.value)
    if inner == "string":
        return MetaValue([str(v) for v in items], "array[string]")
    return MetaValue(np.asarray(items, dtype={"bool": np.bool_}.get(inner, np.dtype(inner))), f"array[{inner}]")
