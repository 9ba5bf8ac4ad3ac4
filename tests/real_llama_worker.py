"""Run by tests/test_real_models.py in a process of its own, with llama-cpp-python importable: llama.cpp's token
ids for a text and its top-1 token at every position.

    python tests/real_llama_worker.py MODEL.gguf TEXT.txt OUT.npz

OUT.npz gets `ids` (int32, the text tokenized as llama.cpp does, BOS as the file says) and `top1` (int32, the
argmax of llama.cpp's logits after each position). A process of its own because tools/llama_cpp.py takes the
name `llama_cpp` in the tests' process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama


def main(model: str, text_file: str, out: str) -> None:
    text = Path(text_file).read_text(encoding="utf-8")
    llm = Llama(model_path=model, n_ctx=2048, n_batch=2048, logits_all=True, n_threads=2, verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llm.eval(ids)
    top1 = np.asarray(llm.scores[: len(ids)]).argmax(-1)
    np.savez(out, ids=np.asarray(ids, dtype=np.int32), top1=top1.astype(np.int32))


if __name__ == "__main__":
    main(*sys.argv[1:4])
