"""A decoding step over several sequences at once (RowCaches: one row per sequence, each with its own cache
and position) gives each sequence what decoding it alone gives: the server's continuous batching rests on it."""

from __future__ import annotations

import pytest
import torch

import tfb
from tfb.nn.cache import Cache, RowCaches

PROMPTS = [[5, 9, 13, 2, 7, 31], [3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [8, 8, 8]]


def _decode(model: torch.nn.Module, batched: bool, steps: int = 6) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy decoding of PROMPTS, the steps batched (rows joining at different lengths) or one by one."""
    caches = [model.new_cache() for _ in PROMPTS]
    logits = [model(torch.tensor([p]), c, last_only=True)[0, -1] for p, c in zip(PROMPTS, caches, strict=True)]
    tokens: list[list[int]] = [[] for _ in PROMPTS]
    seen: list[torch.Tensor] = []
    for _ in range(steps):
        nexts = [int(torch.argmax(x)) for x in logits]
        for out, t in zip(tokens, nexts, strict=True):
            out.append(t)
        if batched:
            ids = torch.tensor([[t] for t in nexts])
            rows = model(ids, RowCaches(caches), last_only=True)[:, -1]
            logits = list(rows)
        else:
            logits = [model(torch.tensor([[t]]), c, last_only=True)[0, -1] for t, c in zip(nexts, caches, strict=True)]
        seen.extend(logits)
    assert [c.length for c in caches] == [len(p) + steps for p in PROMPTS]
    return tokens, seen


def _assert_rows_equal_alone(model: torch.nn.Module, atol: float, rtol: float) -> None:
    alone, alone_logits = _decode(model, batched=False)
    together, together_logits = _decode(model, batched=True)
    assert together == alone
    for a, b in zip(alone_logits, together_logits, strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol)


@pytest.mark.parametrize("spec", ["qwen3", "gemma3", "lfm2"])
def test_batched_steps_equal_each_sequence_alone(tiny_gguf, spec: str) -> None:
    """Attention (projections shared, attention per row), a window, and a recurrent mixer (run per row)."""
    model = tfb.load(tiny_gguf(spec))
    _assert_rows_equal_alone(model, atol=2e-5, rtol=1e-4)


def test_batched_steps_of_a_hybrid_model(tiny_model) -> None:
    """Mamba-2 layers (a recurrent state per sequence) between attention layers."""
    model = tfb.load(tiny_model("granitehybrid", "f32")[1])
    _assert_rows_equal_alone(model, atol=2e-5, rtol=1e-4)


def test_batched_steps_with_shared_keys_and_per_layer_inputs(tiny_model) -> None:
    """Gemma 4: layers that read an earlier layer's keys and values read their own row's, and each row gets its
    own per-layer input embeddings."""
    model = tfb.load(tiny_model("gemma4", "f32")[1])
    _assert_rows_equal_alone(model, atol=2e-5, rtol=1e-4)


def test_rows_of_a_quantized_model(tiny_gguf) -> None:
    """Packed weights take the many-row kernel for a batch and the matrix-vector one alone: same tokens."""
    model = tfb.load(tiny_gguf("qwen3", qtype="Q4_K"))
    _assert_rows_equal_alone(model, atol=1e-3, rtol=1e-3)


def _continue(model: torch.nn.Module, cache: Cache, tokens: list[int]) -> torch.Tensor:
    return model(torch.tensor([tokens]), cache, last_only=True)[0, -1]


@pytest.mark.parametrize("recurrent", [False, True])
def test_a_forked_cache_goes_on_alone(tiny_gguf, tiny_model, recurrent: bool) -> None:
    """Cache.fork (the server's choices of one prompt): the fork and the original, each continued with other
    tokens, give what a cache that saw only their own tokens gives: keys and values and recurrent states
    are copied, not shared (Falcon-H1: attention and Mamba-2 side by side in each layer, a ParallelState)."""
    model = tfb.load(tiny_model("falcon_h1", "f32")[1] if recurrent else tiny_gguf())
    assert model.new_cache().rewindable != recurrent
    prompt = [5, 9, 13, 2, 7, 31]
    cache = model.new_cache()
    _continue(model, cache, prompt)
    fork = cache.fork()
    forked = [_continue(model, fork, [3, 4]), _continue(model, fork, [6])]
    original = [_continue(model, cache, [8, 1]), _continue(model, cache, [2])]
    for tokens, got in (([3, 4], forked), ([8, 1], original)):
        fresh = model.new_cache()
        _continue(model, fresh, prompt)
        assert torch.equal(got[0], _continue(model, fresh, tokens)) and torch.equal(got[1], _continue(
            model, fresh, [6] if tokens == [3, 4] else [2]))
    assert fork.length == cache.length == len(prompt) + 3
