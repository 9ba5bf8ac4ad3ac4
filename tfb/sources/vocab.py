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
BPE_MODEL = next(name for name, model in TOKENIZER_MODELS.items() if model.kind == "bpe" and model.pre is None)
SPM_MODEL = "tokenizer.model"
# the `tokenizer.ggml.model` value of SentencePiece vocabularies
SPM_MODEL_NAME = next(name for name, model in TOKENIZER_MODELS.items() if model.kind == "spm" and model.pre is None)
# gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


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


def tokenizer_metadata(directory: Path, vocab_size: int | None, vocab_pre: str | None = None,
                       kinds: tuple[str, ...] = ("spm", "bpe"), merges: bool | None = None,
                       user_defined: tuple[str, ...] = ()) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys of a checkpoint directory: the first of `kinds` (the converter's order of attempts
    for the family) whose file is there: `spm` (tokenizer.model), `spm_json` (a SentencePiece-style BPE
    tokenizer.json with byte fallback), `bpe` (byte-level BPE tokenizer.json). `merges` overrides whether the
    merges are written; `user_defined` token texts are typed USER_DEFINED."""
    for kind in kinds:
        if kind == "spm" and (directory / SPM_MODEL).is_file():
            out = spm_metadata(directory, vocab_size)
        elif kind == "spm_json" and is_spm_json(directory / TOKENIZER_JSON):
            out = spm_json_metadata(directory)
        elif kind == "bpe" and (directory / TOKENIZER_JSON).is_file():
            out = bpe_metadata(directory, vocab_size, vocab_pre)
        else:
            continue
        if merges is not None and merges != ("tokenizer.ggml.merges" in out):
            if merges:
                out.update({k: v for k, v in special_metadata(directory, None).items() if k == "tokenizer.ggml.merges"})
            else:
                out.pop("tokenizer.ggml.merges", None)
        if user_defined:
            tokens, types = out["tokenizer.ggml.tokens"].value, out["tokenizer.ggml.token_type"].value
            for i, text in enumerate(tokens):
                if text in user_defined:
                    types[i] = USER_DEFINED
        return out
    files = {"spm": SPM_MODEL, "spm_json": f"{TOKENIZER_JSON} (BPE with byte fallback)", "bpe": TOKENIZER_JSON}
    raise TokenizerError(f"{directory}: no tokenizer file tfb reads ({', '.join(kinds)}: "
                         f"{' or '.join(files[k] for k in kinds)})")


def is_spm_json(path: Path) -> bool:
    """A SentencePiece vocabulary saved as tokenizer.json, as the converter tells it apart (gguf-py's HF
    vocabulary): a BPE model with byte fallback and a decoder sequence (the U+2581 replacement, byte fallback...);
    byte-level BPE files (merges ignored, no byte fallback) are not."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read: {e}") from None
    model = data.get("model") if isinstance(data, dict) else None
    decoder = data.get("decoder") if isinstance(data, dict) else None
    return (isinstance(model, dict) and model.get("type") == "BPE" and model.get("byte_fallback") is True
            and isinstance(decoder, dict) and decoder.get("type") == "Sequence")


def spm_json_metadata(directory: Path) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys the converter writes for a SentencePiece-style tokenizer.json (gguf-py's HF
    vocabulary class, the converter's path for such a file without tokenizer.model): the model's vocabulary in id
    order as stored (U+2581 for spaces), then the added tokens past it; every score -1000; types BYTE for
    `<0xXX>` pieces, CONTROL for the special tokens tokenizer_config.json names (bos, eos, unk... as transformers
    lists them), USER_DEFINED for other added tokens, else NORMAL; no padding to config.json's vocab_size."""
    import re

    from tokenizers import Tokenizer

    path = directory / TOKENIZER_JSON
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library's errors are plain exceptions
        raise TokenizerError(f"{path}: not a tokenizer the `tokenizers` library reads: {e}") from None
    base = tok.get_vocab_size(with_added_tokens=False)
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    missing = [i for i in range(base) if i not in by_id]
    if missing:
        raise TokenizerError(f"{path}: the vocabulary has no token of id {missing[0]} (ids must run 0..{base - 1})")
    special_ids = {vocab[t] for t in configured_specials(directory) if t in vocab}
    byte = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(base):
        text = by_id[i]
        tokens.append(text)
        types.append(BYTE if byte.fullmatch(text) else CONTROL if i in special_ids else NORMAL)
    for i in sorted(i for i in by_id if i >= base):  # added tokens past the model's vocabulary, by id
        tokens.append(by_id[i])
        types.append(CONTROL if i in special_ids else USER_DEFINED)
    out = {"tokenizer.ggml.model": MetaValue(SPM_MODEL_NAME, "string"),
           "tokenizer.ggml.pre": MetaValue("default", "string"),
           "tokenizer.ggml.tokens": MetaValue(tokens, "array[string]"),
           "tokenizer.ggml.scores": MetaValue(np.full(len(tokens), -1000.0, dtype=np.float32), "array[float32]"),
           "tokenizer.ggml.token_type": MetaValue(np.asarray(types, dtype=np.int32), "array[int32]")}
    out.update(special_metadata(directory, len(tokens), merges=False))
    return out


def bpe_metadata(directory: Path, vocab_size: int | None, vocab_pre: str | None = None) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys for a byte-level BPE tokenizer.json."""
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
    out.update(special_metadata(directory, None))  # the converter's BPE path checks no id against the vocabulary
    return out


def spm_metadata(directory: Path, vocab_size: int | None) -> dict[str, MetaValue]:
    """The `tokenizer.*` keys the converter writes for a SentencePiece tokenizer.model (its
    `_set_vocab_sentencepiece`): pieces, scores and types in id order, `[PAD{i}]` (UNUSED, score -10000) up to
    config.json's vocab_size, added_tokens.json entries USER_DEFINED, tokenizer_config.json's
    added_tokens_decoder entries CONTROL when special (or special-looking) else USER_DEFINED, both scored -1000."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise TokenizerError(f"{directory}: reading tokenizer.model needs the sentencepiece package "
                             "(pip install sentencepiece)") from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(directory / SPM_MODEL))
    except Exception as e:  # sentencepiece raises plain exceptions
        raise TokenizerError(f"{directory / SPM_MODEL}: not a SentencePiece model: {e}") from None
    size = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    for i in range(min(sp.vocab_size(), size)):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)
    added = _json(directory / "added_tokens.json")
    for text, i in added.items():
        if isinstance(i, int) and 0 <= i < size:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    decoder = _json(directory / "tokenizer_config.json").get("added_tokens_decoder") or {}
    for key, entry in decoder.items() if isinstance(decoder, dict) else []:
        i = int(key) if str(key).isdigit() else -1
        if not 0 <= i < size or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            continue
        text = entry["content"]
        if entry.get("special") or _looks_special(text):
            types[i] = CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[i] = USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    out = {"tokenizer.ggml.model": MetaValue(SPM_MODEL_NAME, "string"),
           "tokenizer.ggml.pre": MetaValue("default", "string"),
           "tokenizer.ggml.tokens": MetaValue(tokens, "array[string]"),
           "tokenizer.ggml.scores": MetaValue(np.asarray(scores, dtype=np.float32), "array[float32]"),
           "tokenizer.ggml.token_type": MetaValue(np.asarray(types, dtype=np.int32), "array[int32]")}
    out.update(special_metadata(directory, len(tokens), merges=False))
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def special_metadata(directory: Path, n_vocab: int | None, merges: bool = True) -> dict[str, MetaValue]:
    """Merges, special ids, add flags and chat template, as gguf-py's SpecialVocab writes them."""
    from gguf import GGUFWriter, SpecialVocab

    writer = GGUFWriter(path=None, arch="none")
    SpecialVocab(directory, load_merges=merges, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
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
