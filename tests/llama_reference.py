"""llama.cpp itself as a reference: its logits on a GGUF file, from llama-cpp-python built once from the
pinned sdist (tools/llama_cpp.py), run in a separate process (tests/llama_cpp_worker.py).

Settings chosen so that llama.cpp computes what tfb computes by default: float32 KV cache, no flash
attention, every position's logits from one batch, ggml's plain CPU kernels (no repacked weights), two
threads. What remains on float32 files is the order of float32 sums and ggml's own exp, and the float16
table of its GELU; the tolerances are in tests/test_llama_cpp_reference.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from llama_cpp import llama_cpp_python_dir  # tools/llama_cpp.py, not the package

WORKER = Path(__file__).resolve().parent / "llama_cpp_worker.py"
# the smallest context llama.cpp runs with: it rounds the context it is given up to a multiple of 256
# (llama-context.cpp), and picks longrope's factor set from the rounded size, as tfb does
CONTEXT_STEP = 256


def llama_cpp_logits(path: Path, ids: torch.Tensor, context_length: int = CONTEXT_STEP) -> torch.Tensor:
    """llama.cpp's logits [batch, seq, vocab] (float32) for token ids [batch, seq], each row from an empty
    cache, with a context of `context_length` (which llama.cpp rounds up to a multiple of 256)."""
    directory = llama_cpp_python_dir()
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, out_path = Path(tmp, "ids.npy"), Path(tmp, "out.npy")
        np.save(ids_path, ids.numpy().astype(np.int32))
        env = {**os.environ, "PYTHONPATH": str(directory)}
        result = subprocess.run([sys.executable, str(WORKER), str(path), str(ids_path), str(out_path),
                                 str(max(context_length, ids.shape[1]))],
                                env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"llama.cpp failed on {path} (exit {result.returncode}):\n{result.stderr[-4000:]}")
        return torch.from_numpy(np.load(out_path))


TOKENIZE_WORKER = Path(__file__).resolve().parent / "llama_cpp_tokenize_worker.py"


def llama_cpp_tokenize(path: Path, texts: list[str], add_special: bool = False,
                       parse_special: bool = False) -> tuple[list[list[int]], list[str], list[str]]:
    """llama.cpp's ids for each text (llama_tokenize) on the vocabulary of `path`, and its text for those ids
    (llama_detokenize) with special tokens kept and with them removed."""
    directory = llama_cpp_python_dir()
    with tempfile.TemporaryDirectory() as tmp:
        request, out = Path(tmp, "request.json"), Path(tmp, "out.json")
        request.write_text(json.dumps({"texts": texts, "add_special": add_special, "parse_special": parse_special}),
                           encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(directory)}
        result = subprocess.run([sys.executable, str(TOKENIZE_WORKER), str(path), str(request), str(out)],
                                env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"llama.cpp failed on {path} (exit {result.returncode}):\n{result.stderr[-4000:]}")
        data = json.loads(out.read_text(encoding="utf-8"))
        return data["ids"], data["text"], data["plain"]
