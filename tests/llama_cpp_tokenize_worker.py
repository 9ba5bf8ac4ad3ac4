"""Run by tests/llama_reference.py (`llama_cpp_tokenize`) in a process of its own, with the built
llama-cpp-python on PYTHONPATH: llama.cpp's own llama_tokenize and llama_detokenize on a vocabulary.

    python tests/llama_cpp_tokenize_worker.py VOCAB.gguf REQUEST.json OUT.json

REQUEST.json: {"texts": [...], "add_special": bool, "parse_special": bool}. OUT.json: {"ids": [[...], ...],
"text": [...]}, the ids of each text and llama_detokenize(ids, remove_special=False, unparse_special=True)
of them. A process of its own for the reasons given in tests/llama_cpp_worker.py.
"""

from __future__ import annotations

import ctypes
import json
import sys

import llama_cpp as lib


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
    ids_out, texts_out = [], []
    for text in request["texts"]:
        data = text.encode("utf-8", "surrogatepass")
        room = len(data) + 8
        tokens = (lib.llama_token * room)()
        n = lib.llama_tokenize(vocab, data, len(data), tokens, room, request["add_special"],
                               request["parse_special"])
        if n < 0:
            raise SystemExit(f"llama_tokenize needs {-n} tokens for {text!r}")
        ids = list(tokens[:n])
        buf = ctypes.create_string_buffer(8 * len(data) + 64)
        size = lib.llama_detokenize(vocab, tokens, n, buf, len(buf), False, True)
        if size < 0:
            raise SystemExit(f"llama_detokenize needs {-size} bytes for {text!r}")
        ids_out.append(ids)
        texts_out.append(buf.raw[:size].decode("utf-8", "replace"))
    lib.llama_model_free(model)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"ids": ids_out, "text": texts_out}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
