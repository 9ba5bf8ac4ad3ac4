"""Generation: the KV cache changes nothing, greedy decoding equals transformers' generate, sampling is
reproducible and stops where it should."""

from __future__ import annotations

import pytest
import torch
from compare import assert_greedy_equals_transformers

import tfb
import tfb.quant.native as native
from tfb.errors import InputError
from tfb.nn.cache import Cache
from tfb.text.generate import StopStrings, generate_ids
from tfb.text.sampling import DRAW_BLOCK, GREEDY, Sampler, Sampling, apply_repeat_penalty, draw, filter_logits

# every family whose llama.cpp behaviour transformers shares (phimoe differs: test_more_families.py)
FAMILIES = ["llama", "llama_tied", "llama3", "qwen2", "qwen3", "starcoder2", "phi2", "phi3", "phi3_longrope",
            "mistral3", "qwen3moe", "mixtral", "mistral", "gemma", "gemma2", "gemma3", "granite", "olmo", "olmo2",
            "smollm3", "stablelm", "stablelm_parallel", "gpt2", "glm4", "gpt-oss"]


@pytest.mark.parametrize("family", ["qwen3", "phi2", "mixtral", "mistral3"])
def test_incremental_decoding_gives_the_full_forward_logits(tiny_model, family: str) -> None:
    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 45), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        pieces = [model(ids[:, a:b], cache) for a, b in ((0, 20), (20, 21), (21, 33), (33, 45))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4 * full.abs().max().item(), rtol=0)
    assert cache.length == 45


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gpt-oss"])
def test_float16_kv_cache_rounds_only_keys_and_values(tiny_model, family: str, monkeypatch) -> None:
    """A float16 cache (as llama.cpp keeps by default) stores half the bytes and changes the logits only
    by the rounding of keys and values; one-token steps (native kernel) and longer ones (torch) agree with
    the torch path on the same cache. gemma2 and gpt-oss bring soft-capping, windows and sinks."""
    _, path = tiny_model(family, "f32")
    model = tfb.load(path, cache_dtype=torch.float16)
    ids = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(4))
    chunks = ((0, 12), (12, 13), (13, 14), (14, 22), (22, 23), (23, 30))

    def incremental() -> tuple[torch.Tensor, Cache]:
        cache = model.new_cache()
        with torch.no_grad():
            return torch.cat([model(ids[:, a:b], cache) for a, b in chunks], dim=1), cache

    with torch.no_grad():
        full = model(ids)
    steps, cache = incremental()
    assert all(k is not None and k.dtype == torch.float16 for state in cache.layers for k in state.buffers)
    torch.testing.assert_close(steps, full, atol=2e-2 * full.abs().max().item(), rtol=0)
    assert not torch.equal(steps, full)  # the rounding is real
    monkeypatch.setattr(native, "attend", lambda *a, **kw: None)
    torch_steps, _ = incremental()
    torch.testing.assert_close(steps, torch_steps, atol=1e-4 * full.abs().max().item(), rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers_generate(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    # phi3_longrope: stay under the original context, where transformers keeps the short factors
    model = tfb.load(path, context_length=256 if family == "phi3_longrope" else None)
    steps = 3 if family == "mistral" else 20  # mistral: stay inside transformers' sliding window of 8
    assert_greedy_equals_transformers(model, reference, steps)


def test_generation_stops_at_stop_ids_and_max_tokens(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    model = tfb.load(path)
    prompt = [1, 2, 3]
    free = list(generate_ids(model, prompt, max_tokens=12))
    assert len(free) == 12
    stop = free[4]
    stopped = list(generate_ids(model, prompt, max_tokens=12, stop_ids=[stop]))
    assert stopped == free[: free.index(stop) + 1]
    with pytest.raises(InputError):
        list(generate_ids(model, [], max_tokens=3))


def test_context_limit_ends_generation(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    model = tfb.load(path, context_length=10)
    assert len(list(generate_ids(model, [1, 2, 3, 4], max_tokens=50))) == 6
    with pytest.raises(InputError, match="context holds 10"):
        list(generate_ids(model, list(range(10)), max_tokens=1))


def test_sampling_is_reproducible_with_a_seed(tiny_model) -> None:
    _, path = tiny_model("llama", "f32")
    model = tfb.load(path)
    hot = Sampling(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    a = list(generate_ids(model, [5, 6], max_tokens=15, sampling=hot))
    b = list(generate_ids(model, [5, 6], max_tokens=15, sampling=hot))
    c = list(generate_ids(model, [5, 6], max_tokens=15, sampling=Sampling(temperature=1.5, top_k=0, top_p=1.0,
                                                                            min_p=0.0, seed=12)))
    assert a == b and a != c


def test_filters() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_logits(logits, Sampling(top_k=2, top_p=1.0, min_p=0.0))).tolist() == \
        [False, False, True, True, True]
    probs = torch.softmax(logits, 0)  # 0.636, 0.234, 0.086, ...
    kept = ~torch.isinf(filter_logits(logits, Sampling(top_k=0, top_p=0.8, min_p=0.0)))
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.8 < probs[:2].sum()
    kept = ~torch.isinf(filter_logits(logits, Sampling(top_k=0, top_p=1.0, min_p=0.2)))
    assert kept.tolist() == [True, True, False, False, False]  # 0.086 < 0.2 * 0.636
    penalised = apply_repeat_penalty(torch.tensor([2.0, -2.0, 1.0]), [0, 1], 2.0)
    assert penalised.tolist() == [1.0, -4.0, 1.0]
    assert Sampler(GREEDY)(torch.tensor([0.0, 3.0, 1.0]), []) == 1
    with pytest.raises(InputError):
        Sampling(top_p=0.0)


def test_draws_follow_the_probabilities() -> None:
    """Inverse transform sampling over blocks: frequencies match, zero-probability tokens never come, across
    block boundaries and in a partial last block."""
    generator = torch.Generator().manual_seed(3)
    probs = torch.zeros(2 * DRAW_BLOCK + 5)
    chosen = [0, DRAW_BLOCK - 1, DRAW_BLOCK, 2 * DRAW_BLOCK + 4]
    probs[chosen] = torch.tensor([0.1, 0.2, 0.3, 0.4]) * 7  # unnormalised
    counts = torch.bincount(torch.tensor([draw(probs, generator) for _ in range(4000)]), minlength=probs.numel())
    assert counts.sum() == counts[chosen].sum() == 4000
    assert torch.allclose(counts[chosen] / 4000, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)
    only_last = torch.zeros(3 * DRAW_BLOCK)
    only_last[-1] = 1e-30
    assert draw(only_last, generator) == 3 * DRAW_BLOCK - 1


def test_stop_strings_never_leak_a_prefix() -> None:
    guard = StopStrings(["</end>"])
    out = [guard.feed(piece) for piece in ["Hello </", "en", "d> more"]]
    assert out == ["Hello ", "", ""] and guard.hit
    guard = StopStrings(["</end>"])
    assert guard.feed("a </e") == "a " and guard.feed("x") == "</ex" and not guard.hit
