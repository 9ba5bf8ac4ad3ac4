"""A decoding step of one sequence run as one native call (tfb.nn.step): the logits of each step equal
transformers' full forward pass on the same weights, whatever the block's options, across cache growth,
module-path calls in between and forked caches."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from compare import assert_logits_match, greedy_prompt, ids_for, transformers_greedy

import tfb
from tfb.nn.cache import RowCaches
from tfb.quant import native
from tfb.text.generate import Session, generate_ids
from tfb.text.sampling import GREEDY

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels unavailable (no C compiler?)")

# (family, storage type): plain blocks, biases, per-head Q/K norms, fused projections, soft-capping with
# sandwich norms and a scaled embedding, sliding windows with gelu, residual and logit multipliers, a Q/K
# norm over all heads with post-norms only, layers without rope
CASES = [("llama", "q8_0"), ("qwen2", "f16"), ("qwen3", "q8_0"), ("phi3", "q8_0"), ("gemma2", "q8_0"),
         ("gemma3", "q8_0"), ("granite", "q8_0"), ("olmo2", "q8_0"), ("smollm3", "q8_0"),
         ("lfm2", "q8_0"), ("qwen35", "q8_0")]  # recurrent mixers: gated short convolutions, gated delta-nets


def decode(model: Any, ids: torch.Tensor, prompt: int, cache=None) -> torch.Tensor:
    """Logits of ids[:, :prompt] in one call, then of each later token in a call of its own."""
    cache = model.new_cache() if cache is None else cache
    with torch.no_grad():
        steps = [model(ids[:, :prompt], cache)] + [model(ids[:, t:t + 1], cache) for t in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1)


@needs_native
@pytest.mark.parametrize(("family", "outtype"), CASES)
def test_native_steps_equal_transformers(tiny_model, family: str, outtype: str) -> None:
    reference, path = tiny_model(family, outtype)
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 1, 40)  # past the windows (8) and two cache growths (16, 32)
    ours = decode(model, ids, 3)
    assert model.native_step_state == "planned"
    with torch.no_grad():
        assert_logits_match(ours, reference(ids).logits)


@needs_native
@pytest.mark.parametrize("family", ["phi3", "gemma3", "lfm2", "qwen35"])
def test_native_steps_of_several_sequences(tiny_model, family: str) -> None:
    """Continuous batching's step (RowCaches): sequences at different positions, one token each per call."""
    reference, path = tiny_model(family, "q8_0")
    model = tfb.load(path)
    prompts, steps = [3, 14, 29], 12
    sequences = [ids_for(model.config.vocab_size, 1, n + steps) for n in prompts]
    caches = [model.new_cache() for _ in prompts]
    with torch.no_grad():
        for cache, ids, n in zip(caches, sequences, prompts, strict=True):
            model(ids[:, :n], cache)
        ours = [model(torch.cat([ids[:, n + t:n + t + 1] for ids, n in zip(sequences, prompts, strict=True)]),
                      RowCaches(caches)) for t in range(steps)]
        assert model.native_steps.get(len(prompts)) is not None
        for row, (ids, n) in enumerate(zip(sequences, prompts, strict=True)):
            mine = torch.cat([step[row:row + 1] for step in ours], dim=1)
            assert_logits_match(mine, reference(ids).logits[:, n:])


@needs_native
def test_module_calls_and_forks_between_native_steps(tiny_model) -> None:
    reference, path = tiny_model("llama", "q8_0")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 1, 60)
    with torch.no_grad():
        expected = reference(ids).logits
        cache = model.new_cache()
        first = decode(model, ids[:, :20], 1, cache)  # 19 native steps
        chunk = model(ids[:, 20:25], cache)  # the module path writes into the same cache
        rest = torch.cat([model(ids[:, t:t + 1], cache) for t in range(25, 60)], dim=1)
        fork = cache.fork(30)
        forked = torch.cat([model(ids[:, t:t + 1], fork) for t in range(30, 45)], dim=1)
        original = model(ids[:, 59:60], cache.fork(59))  # the original cache is still bound elsewhere
    assert model.native_step_state == "planned"
    assert_logits_match(torch.cat([first, chunk, rest], dim=1), expected)
    assert_logits_match(forked, expected[:, 30:45])
    assert_logits_match(original, expected[:, 59:60])


@needs_native
def test_what_the_native_step_leaves_to_the_modules(tiny_model) -> None:
    """Float weights, a float16 cache, a step already running in another thread and switching the step off keep
    the module path, and still decode."""
    reference, path = tiny_model("llama", "f32")
    ids = ids_for(320, 1, 12)
    model = tfb.load(path)
    decode(model, ids, 1)
    assert model.native_step_state == "unplannable"  # float32 weights: torch's products
    reference, path = tiny_model("llama", "q8_0")
    with torch.no_grad():
        expected = reference(ids).logits
    half = tfb.load(path, cache_dtype=torch.float16)
    assert_logits_match(decode(half, ids, 1), expected, rel=1e-2)
    busy = tfb.load(path)
    decode(busy, ids[:, :3], 1)
    with busy.native_steps[1].lock:  # another thread in its step: this one goes through the modules
        assert_logits_match(decode(busy, ids, 1), expected)
    off = tfb.load(path)
    off.use_native_step(False)
    assert_logits_match(decode(off, ids, 1), expected)
    assert off.native_step_state == "off" and not off.native_steps


@needs_native
@pytest.mark.parametrize("family", ["lfm2", "qwen35"])
def test_recurrent_states_across_module_calls_snapshots_and_forks(tiny_model, family: str) -> None:
    """Recurrent states are replaced between native steps (module calls, Cache.restore, forks) and are
    updated in place by them: each step binds what the cache holds then, from position 0 on."""
    reference, path = tiny_model(family, "q8_0")
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 1, 32)
    with torch.no_grad():
        expected = reference(ids).logits
        cache = model.new_cache()
        first = decode(model, ids[:, :12], 1, cache)  # every token a native step, from position 0
        step, native_steps = model.native_steps[1], []
        model.native_steps[1] = lambda x, c: native_steps.append(step(x, c)) or native_steps[-1]  # count them
        snapshot = cache.snapshot()
        chunk = model(ids[:, 12:16], cache)  # the module path replaces the states
        rest = torch.cat([model(ids[:, t:t + 1], cache) for t in range(16, 24)], dim=1)
        fork = cache.fork()
        forked = torch.cat([model(ids[:, t:t + 1], fork) for t in range(24, 32)], dim=1)
        more = torch.cat([model(ids[:, t:t + 1], cache) for t in range(24, 28)], dim=1)  # the original goes on
        cache.restore(snapshot)
        again = torch.cat([model(ids[:, t:t + 1], cache) for t in range(12, 20)], dim=1)
        cache.restore(cache.initial)
        restart = torch.cat([model(ids[:, t:t + 1], cache) for t in range(0, 4)], dim=1)
    assert model.native_step_state == "planned"
    assert len(native_steps) == 32 and all(logits is not None for logits in native_steps)
    assert_logits_match(torch.cat([first, chunk, rest, forked], dim=1), expected)
    assert_logits_match(more, expected[:, 24:28])
    assert_logits_match(again, expected[:, 12:20])
    assert_logits_match(restart, expected[:, :4])
    # a chat session whose second prompt leaves the first answer after two tokens: the session goes back to
    # its snapshot after the first prompt (5 positions), the native steps go on from the restored states
    session = Session(model.new_cache())
    prompt = greedy_prompt(model.config.vocab_size)
    first = list(generate_ids(model, prompt, max_tokens=4, sampling=GREEDY, session=session))
    second = prompt + first[:2] + prompt[:3]
    assert list(generate_ids(model, second, max_tokens=6, sampling=GREEDY, session=session)) == \
        transformers_greedy(reference, second, 6)
    assert session.cache.length == len(second) + 6 and len(native_steps) == 32 + 4 + 6


@needs_native
def test_recurrent_native_steps_with_int8_activations_against_llama_cpp(tiny_model) -> None:
    """With 8-bit activations (as llama.cpp computes these weights), one token a call through the native step of
    a model with gated delta-nets (their convolution steps too) and gated attention: perplexity on the tests'
    English text within 1% of llama.cpp's own on the file, and its top-1 token at >= 90% of the positions (this
    tiny random model's logits are flat: the module path agrees on 94% as well; lfm2 measured the same)."""
    import math
    from pathlib import Path

    from llama_reference import llama_cpp_logits

    _, path = tiny_model("qwen35", "q8_0")
    text = (Path(__file__).resolve().parent / "data" / "real_text.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tfb.load_tokenizer(path).encode(text)[:200]])
    model = tfb.load(path, int8_activations=True)
    ours = decode(model, ids, 1)
    assert model.native_step_state == "planned"
    theirs = llama_cpp_logits(path, ids)

    def perplexity(logits: torch.Tensor) -> float:
        return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())

    assert (ours.argmax(-1) == theirs.argmax(-1)).double().mean().item() >= 0.9
    assert abs(perplexity(ours) / perplexity(theirs) - 1) <= 0.01
