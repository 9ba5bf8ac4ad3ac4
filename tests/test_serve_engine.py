"""The serving engine in-process: jobs decoded together give what tfb.generate gives each alone; finishing,
cancelling and a failing step free the slots and leave the engine serving."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import tfb
import tfb.serve.engine as engine_module
from tfb.serve.engine import Chunk, Engine, Job
from tfb.text.generate import generate_ids
from tfb.text.sampling import GREEDY, Sampling

PROMPTS = ["Once upon a time", "The", "In a galaxy far away there was", "1 2 3 4", "Hello", "a b", "x", "Why?"]


class Collect:
    def __init__(self, choices: int = 1) -> None:
        self.choices = choices
        self.chunks: list[Chunk] = []
        self.done = threading.Event()

    def __call__(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        if sum(c.finish is not None for c in self.chunks) == self.choices:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def finish(self) -> str | None:
        return self.chunks[-1].finish if self.chunks else None


@pytest.fixture(scope="module")
def loaded(tiny_gguf) -> tuple[Any, Any]:
    path = tiny_gguf()
    return tfb.load(path), tfb.load_tokenizer(path)


@contextlib.contextmanager
def running(engine: Engine) -> Iterator[Engine]:
    """The engine's thread started for the block and stopped after it, whatever the block raises."""
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def _run(engine: Engine, jobs: list[tuple[list[int], int, dict[str, Any]]]) -> list[Collect]:
    outs = []
    for prompt, max_tokens, options in jobs:
        out = Collect(options.get("n", 1))
        engine.submit(Job(prompt=prompt, max_tokens=max_tokens, emit=out, **options))
        outs.append(out)
    for out in outs:
        assert out.done.wait(120)
    return outs


@pytest.mark.parametrize("budget", [256, 5])
def test_jobs_decoded_together_equal_generate_alone(loaded, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget of 5 prompt tokens a turn, prompts are computed in chunks while others decode."""
    monkeypatch.setattr(engine_module, "PREFILL_BUDGET", budget)
    model, tok = loaded
    with running(Engine(model, tok, parallel=8)) as engine:
        outs = _run(engine, [(tok.encode(p), 10, {"sampling": GREEDY}) for p in PROMPTS])
    assert engine.max_batch == len(PROMPTS) or budget < 256
    for prompt, out in zip(PROMPTS, outs, strict=True):
        gen = tfb.generate(model, tok, prompt, max_tokens=10, sampling=GREEDY)
        assert out.text == "".join(gen)
        assert out.finish == ("length" if gen.stats.stop_reason == "max tokens" else "stop")
        assert out.chunks[-1].completion_tokens == len(gen.tokens)


def test_more_jobs_than_slots_wait_their_turn(loaded) -> None:
    model, tok = loaded
    with running(Engine(model, tok, parallel=3)) as engine:
        outs = _run(engine, [(tok.encode(p), 5, {"sampling": GREEDY}) for p in PROMPTS])
    assert engine.max_batch == 3 and engine.stats()["running"] == 0
    assert all(out.finish in ("length", "stop") for out in outs)


def test_stop_strings_and_logprobs(loaded) -> None:
    model, tok = loaded
    with running(Engine(model, tok, parallel=2)) as engine:
        (full,) = _run(engine, [(tok.encode("Once"), 12, {"sampling": GREEDY, "top_logprobs": 3})])
        stop = full.text[4:7]
        (cut,) = _run(engine, [(tok.encode("Once"), 12, {"sampling": GREEDY, "stop": [stop]})])
    lps = [lp for c in full.chunks for lp in c.logprobs]
    assert len(lps) == 12 and all(len(lp.top) == 3 and lp.top[0][1] >= lp.logprob for lp in lps)
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish == "stop"


def test_cancel_frees_the_slot_and_a_failing_step_ends_only_its_jobs(loaded) -> None:
    model, tok = loaded
    engine = Engine(model, tok, parallel=2)
    engine.start()
    try:
        first = Collect()
        job = Job(prompt=tok.encode("go"), max_tokens=400, emit=first, sampling=GREEDY)
        engine.submit(job)
        job.cancel()
        (after,) = _run(engine, [(tok.encode("next"), 3, {"sampling": GREEDY})])
        assert after.finish == "length" and engine.stats()["running"] == 0
        assert first.finish is None  # a cancelled job is dropped without a word

        real: Callable[..., torch.Tensor] = engine.model.forward

        def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
            raise RuntimeError("boom")

        engine.model.forward = broken  # type: ignore[method-assign]
        (failed,) = _run(engine, [(tok.encode("fail"), 3, {"sampling": GREEDY})])
        engine.model.forward = real  # type: ignore[method-assign]
        assert failed.finish == "error" and "boom" in failed.chunks[-1].error
        (again,) = _run(engine, [(tok.encode("again"), 2, {"sampling": GREEDY})])
        assert again.finish == "length"
    finally:
        engine.model.__dict__.pop("forward", None)
        engine.stop()


def test_choices_share_the_prompt_and_each_equals_its_own_generation(loaded) -> None:
    """n = 3: the prompt is computed once, each choice goes on from a copy of its cache with seed + index, and
    each equals generating alone with that seed; a job of 3 choices waits for 3 free slots."""
    model, tok = loaded
    hot = Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    with running(Engine(model, tok, parallel=4)) as engine:
        out, other = _run(engine, [(tok.encode("Once upon a time"), 12, {"sampling": hot, "n": 3}),
                                   (tok.encode("Hello"), 4, {"sampling": GREEDY, "n": 3})])
    assert engine.max_batch == 3  # the second job waited: 3 + 3 choices do not fit 4 slots
    for i in range(3):
        chunks = [c for c in out.chunks if c.index == i]
        assert [c.finish for c in chunks].count(None) == len(chunks) - 1 and chunks[-1].finish is not None
        alone = tfb.generate(model, tok, "Once upon a time", max_tokens=12,
                             sampling=dataclasses.replace(hot, seed=5 + i))
        assert "".join(c.text for c in chunks) == "".join(alone)
        assert chunks[-1].completion_tokens == len(alone.tokens)
    greedy = {"".join(c.text for c in other.chunks if c.index == i) for i in range(3)}
    assert greedy == {"".join(tfb.generate(model, tok, "Hello", max_tokens=4, sampling=GREEDY))}


def _ids(out: Collect) -> list[int]:
    return [lp.token for c in out.chunks for lp in c.logprobs]


@pytest.mark.parametrize("recurrent", [False, True])
def test_a_kept_prompt_is_reused_and_gives_a_fresh_computation(tiny_gguf, tiny_model, recurrent: bool) -> None:
    """A finished sequence's cache is kept: a prompt extending what it holds computes only the rest; one that
    parts from it midway reuses the shared part where the cache can forget positions (attention only, not
    Mamba-2 states). Every answer equals generation from an empty cache."""
    path = tiny_model("granitehybrid", "f32")[1] if recurrent else tiny_gguf()
    model, tok = tfb.load(path), tfb.load_tokenizer(path)
    assert model.new_cache().rewindable != recurrent
    options = {"sampling": GREEDY, "top_logprobs": 0}
    first_prompt = tok.encode("Once upon a time there was")
    with running(Engine(model, tok, parallel=2)) as engine:
        (first,) = _run(engine, [(first_prompt, 8, options)])
        held = first_prompt + _ids(first)[:-1]  # the last token was sampled, never computed
        assert engine.stats()["reused_prompt_tokens"] == 0 and len(held) == len(first_prompt) + 7
        extended, parted = [*held, 7, 8, 9], [*first_prompt[:3], 11, 12, 13]
        (longer,) = _run(engine, [(extended, 6, options)])
        reused = engine.stats()["reused_prompt_tokens"]
        (other,) = _run(engine, [(parted, 6, options)])
    assert reused == len(held)
    assert engine.stats()["reused_prompt_tokens"] - reused == (0 if recurrent else 3)
    for prompt, out in ((extended, longer), (parted, other)):
        assert _ids(out) == list(generate_ids(model, prompt, max_tokens=6, sampling=GREEDY, stop_ids=tok.stop_ids))


def test_kept_prompts_stay_within_their_budget(loaded) -> None:
    from tfb.serve.prompts import PromptCache

    model, _ = loaded

    def cache(length: int) -> Any:
        c = model.new_cache()
        model(torch.tensor([list(range(1, length + 1))]), c)
        return c

    small = cache(4).nbytes()  # room for 16 positions, the least a cache allocates
    assert small > 0 and cache(40).nbytes() > 2 * small
    kept = PromptCache(budget=int(1.5 * small))
    kept.keep([1, 2, 3, 4], cache(4))
    kept.keep([1, 2, 3, 4, 5, 6], cache(6))  # holds the first one's tokens and more: it replaces it
    assert [len(t) for t, _, _ in kept.entries] == [6]
    kept.keep(list(range(1, 41)), cache(40))  # over the budget alone: not kept
    kept.keep([9, 8, 7, 6, 5], cache(5))  # two small caches are over the budget: the least recently used goes
    assert [t for t, _, _ in kept.entries] == [[9, 8, 7, 6, 5]]
    assert kept.take([9, 8, 1]).length == 2 and kept.take([4, 4]) is None
