"""Run by tests/llama_reference.py in a process of its own, with the built llama-cpp-python on PYTHONPATH:
llama.cpp's logits at every position of each row of token ids, through llama.h's own calls (the
bindings' high-level `Llama` class overrides some of llama.cpp's defaults, such as the YaRN betas).

    python tests/llama_cpp_worker.py MODEL.gguf IDS.npy OUT.npy N_CTX

IDS.npy holds int32 [batch, seq]; OUT.npy gets float32 [batch, seq, vocab]. A process of its own because
tools/llama_cpp.py takes the name `llama_cpp` in the tests' process, and so that llama.cpp's threads, logs
and any crash stay out of pytest.
"""

from __future__ import annotations

import sys

import llama_cpp as lib
import numpy as np

THREADS = 2


def logits(model_path: str, ids: np.ndarray, n_ctx: int) -> np.ndarray:
    rows, seq = ids.shape
    lib.llama_backend_init()
    model_params = lib.llama_model_default_params()
    # no repacked or AMX weight buffers: ggml's plain CPU kernels (the AMX one crashes on some machines'
    # tiny Q8_0 matrices, and repacking changes only the order of sums)
    model_params.use_extra_bufts = False
    model = lib.llama_model_load_from_file(model_path.encode(), model_params)
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    params = lib.llama_context_default_params()  # llama.cpp's defaults, then what differs from them:
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = seq  # every position in one graph
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = THREADS
    params.type_k = params.type_v = lib.GGML_TYPE_F32  # keys and values kept in float32 (default: F16)
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the plain softmax(QK^T)V graph
    context = lib.llama_init_from_model(model, params)
    if not context:
        raise SystemExit(f"llama.cpp could not make a context for {model_path}")
    vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    out = np.empty((rows, seq, vocab), dtype=np.float32)
    batch = lib.llama_batch_init(seq, 0, 1)
    for row in range(rows):
        lib.llama_memory_clear(lib.llama_get_memory(context), True)  # each row from an empty cache
        for i in range(seq):
            batch.token[i] = int(ids[row, i])
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = seq
        if lib.llama_decode(context, batch) != 0:
            raise SystemExit(f"llama_decode failed on {model_path}")
        out[row] = np.ctypeslib.as_array(lib.llama_get_logits(context), shape=(seq * vocab,)).reshape(seq, vocab)
    lib.llama_batch_free(batch)
    lib.llama_free(context)
    lib.llama_model_free(model)
    return out


if __name__ == "__main__":
    model_path, ids_path, out_path, n_ctx = sys.argv[1:]
    np.save(out_path, logits(model_path, np.load(ids_path), int(n_ctx)))
