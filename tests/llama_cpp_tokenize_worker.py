"""Run by tests/llama_reference.py (`llama_cpp_tokenize`) in a process of its own, with the built
llama-cpp-python on PYTHONPATH: llama.cpp's own llama_tokenize and llama_detokenize on a vocabulary.

    python tests/llama_cpp_tokenize_worker.py VOCAB.gguf REQUEST.json OUT.json

REQUEST.json: {"texts": [...], "add_special": bool, "parse_special": bool}. OUT.json: {"ids": [[...], ...],
"text": [...], "plain": [...]}: the ids of each text, llama_detokenize(ids, remove_special=False,
unparse_special=True) of them, and llama_detokenize(ids, remove_special=True, unparse_special=False).
A process of its own for the reasons given in tests/llama_cpp_worker.py.
"""

from __future__ import annotations

import ctypes
import json
import sys

import llama_cpp as lib


def detokenize(vocab: object, tokens: object, n: int, remove_special: bool, unparse_special: bool) -> str:
    room = 64
    while True:
        buf = ctypes.create_string_buffer(room)
        size = lib.llama_detokenize(vocab, tokens, n, buf, room, remove_special, unparse_special)
        if size >= 0:
            return buf.raw[:size].decode("utf-8", "replace")
        room = -size


def main(model_path: str, request_path: str, out_path: str) -> None:
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    vocab = lib.llama_model_get_vocab(model)
    ids_out, texts_out, plain_out = [], [], []
    for text in request["texts"]:
        data = text.encode("utf-8", "surrogatepass")
        room = len(data) + 8
        tokens = (lib.llama_token * room)()
        n = lib.llama_tokenize(vocab, data, len(data), tokens, room, request["add_special"],
                               request["parse_special"])
        if n < 0:
            raise SystemExit(f"llama_tokenize needs {-n} tokens for {text!r}")
        ids = list(tokens[:n])
        ids_out.append(ids)
        texts_out.append(detokenize(vocab, tokens, n, False, True))
        plain_out.append(detokenize(vocab, tokens, n, True, False))
    lib.llama_model_free(model)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"ids": ids_out, "text": texts_out, "plain": plain_out}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
