"""Continuous batching: one thread runs the model for every request being served.

Each request is a Job with its own cache. The loop admits waiting jobs while fewer than `parallel` run;
each turn computes at most PREFILL_BUDGET prompt tokens (the oldest starting jobs first, a long prompt in
chunks: the running jobs are never stalled for long, and a job's first token comes as soon as its own
prompt is done), samples a token for every job whose logits are ready, then runs one decoding step for
every running job at once: the new tokens are the rows of one forward call
(tfb.nn.cache.RowCaches), so each weight matrix is read once per step for all of them. A job that finishes,
or whose client went away (`cancel()`), leaves the batch before the next step and its cache is dropped.

A finished sequence's cache is kept (tfb.serve.prompts): a later prompt that starts with the same tokens
computes only the rest.

A job may ask for several choices (`n`): they take n slots, the prompt is computed once, and each choice
goes on from a copy of that cache (Cache.fork) with its own sampler (choice i seeded with seed + i).

Jobs report through their `emit` callback, called on the engine's thread: text pieces with their tokens'
log-probabilities, then, per choice (`Chunk.index`), a last Chunk with the finish reason ("stop", "length"
or "error").
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tfb.nn.cache import Cache, RowCaches
from tfb.nn.model import Transformer
from tfb.serve.prompts import PromptCache
from tfb.text.generate import StopStrings
from tfb.text.sampling import Sampler, Sampling

PREFILL_BUDGET = 256  # prompt tokens computed per loop turn, over the jobs that are starting
DEFAULT_PROMPT_CACHE = 1 << 30  # bytes of finished sequences' caches kept for reuse


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # the most likely tokens and their log-probabilities


@dataclass
class Chunk:
    """What a job produced since its last chunk; `finish` is set on the last one."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None  # "stop", "length", "error"
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0  # the choice it belongs to


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    emit: Callable[[Chunk], None]
    sampling: Sampling = field(default_factory=Sampling)
    stop: Sequence[str] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; else how many alternatives per token
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1  # choices: sequences generated from the prompt, each with its own finish
    cancelled: bool = False
    arrived: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Stop generating (the client went away): the job leaves the batch at the next step."""
        self.cancelled = True


class _Running:
    """One choice of a job in the engine. Choice 0 computes the prompt; the others (`forks`) wait without a
    cache until it is done, then go on from copies of its cache."""

    def __init__(self, job: Job, cache: Cache | None, tokenizer: Any, index: int = 0) -> None:
        self.job, self.cache, self.index = job, cache, index
        seed = job.sampling.seed
        self.sampler = Sampler(job.sampling if seed is None or not index else
                               dataclasses.replace(job.sampling, seed=seed + index))
        self.forks: list[_Running] = []
        self.decoder = tokenizer.stream(skip_special=True)
        self.guard = StopStrings(list(job.stop))
        self.history = list(job.prompt)
        self.computed = 0  # prompt tokens in the cache
        self.generated: list[int] = []
        self.counts: dict[int, int] = {}
        self.logits: torch.Tensor | None = None  # the next token's, once the prompt (or last token) ran


class Engine:
    """Serves Jobs from a thread; `submit` may be called from any thread."""

    def __init__(self, model: Transformer, tokenizer: Any, parallel: int = 4,
                 prompt_cache: int = DEFAULT_PROMPT_CACHE) -> None:
        """prompt_cache: bytes of finished sequences' caches kept for reuse (0: none)."""
        self.model, self.tokenizer, self.parallel = model, tokenizer, max(1, parallel)
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self.context = model.config.run_context_length
        self.prompts = PromptCache(prompt_cache)
        self.reused = 0  # prompt tokens not computed thanks to a kept cache
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.running: list[_Running] = []
        self.steps = 0  # batched decoding steps run (for tests and benchmarks)
        self.max_batch = 0  # the most sequences one step decoded
        self.cancelled = 0  # jobs dropped unfinished (their client went away)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next: Job | None = None  # taken from the queue, waiting for enough free slots

    def stats(self) -> dict[str, int]:
        waiting = self.waiting.qsize() + (self._next is not None)
        return {"running": len(self.running), "waiting": waiting, "steps": self.steps,
                "largest_batch": self.max_batch, "cancelled": self.cancelled, "reused_prompt_tokens": self.reused}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tfb-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the loop (running jobs are ended as cancelled)."""
        self._stopping = True
        self.waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------- loop

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                self._admit()
                if self._stopping:
                    break
                try:
                    self._turn()
                except Exception as e:  # a bug must not take the server down: end the jobs involved
                    failed, self.running = self.running, []
                    for run in failed:
                        self._fail(run, f"{type(e).__name__}: {e}")
        for run in self.running:
            run.job.cancel()

    def _admit(self) -> None:
        """Take waiting jobs, in order, while their choices fit the free slots (block while there is nothing
        to do). A job asking for more choices than there are slots gets them all, alone."""
        while len(self.running) < self.parallel:
            job, self._next = self._next, None
            if job is None:
                try:
                    job = self.waiting.get(block=not self.running)
                except queue.Empty:
                    return
                if job is None:  # stop() woke us
                    return
            if job.cancelled:
                continue
            if self.running and len(self.running) + job.n > self.parallel:
                self._next = job
                return
            kept = self.prompts.take(job.prompt)
            first = _Running(job, kept if kept is not None else self.model.new_cache(), self.tokenizer)
            if kept is not None:
                first.computed = kept.length
                self.reused += kept.length
            first.forks = [_Running(job, None, self.tokenizer, i) for i in range(1, job.n)]
            self.running += [first, *first.forks]

    def _turn(self) -> None:
        """Compute prompt chunks of starting jobs, sample a token for every job with logits, then one
        batched decoding step for those that go on."""
        gone = [r for r in self.running if r.job.cancelled]
        if gone:
            self.cancelled += len({id(r.job) for r in gone})  # jobs, not their choices
            self.running = [r for r in self.running if not r.job.cancelled]
        budget = PREFILL_BUDGET
        for run in self.running:
            if budget > 0 and run.cache is not None and run.computed < len(run.job.prompt):
                budget -= self._prefill(run, budget)
        decoding = [r for r in self.running if r.logits is not None and self._sample(r)]
        # what stays: the jobs going on, and those whose prompt is not all computed yet
        self.running = [r for r in self.running if r.computed < len(r.job.prompt) or r in decoding]
        if not decoding:
            return
        ids = torch.tensor([[r.history[-1]] for r in decoding])
        caches = [r.cache for r in decoding if r.cache is not None]  # all: only computed prompts decode
        if len(caches) == 1:
            logits = self.model(ids, caches[0], last_only=True)[:, -1]
        else:
            logits = self.model(ids, RowCaches(caches), last_only=True)[:, -1]
        self.steps += 1
        self.max_batch = max(self.max_batch, len(decoding))
        for run, row in zip(decoding, logits, strict=True):
            run.logits = row

    def _prefill(self, run: _Running, budget: int) -> int:
        """Compute up to `budget` more of the job's prompt; returns how many tokens that was."""
        prompt, cache = run.job.prompt, run.cache
        assert cache is not None
        chunk = prompt[run.computed:run.computed + budget]
        logits = self.model(torch.tensor([chunk]), cache, last_only=True)[0, -1]
        run.computed += len(chunk)
        if run.computed == len(prompt):
            run.logits = logits
            for fork in run.forks:  # the other choices go on from the same prompt
                fork.cache, fork.computed, fork.logits = cache.fork(), run.computed, logits
        return len(chunk)

    def _sample(self, run: _Running) -> bool:
        """Choose the next token and report it; False when the job is finished."""
        assert run.logits is not None
        job = run.job
        raw = logits = run.logits.float()
        if (job.presence_penalty or job.frequency_penalty) and run.counts:  # OpenAI's: over generated tokens
            ids = torch.tensor(list(run.counts))
            counts = torch.tensor(list(run.counts.values()), dtype=torch.float32)
            logits = logits.clone()
            logits[ids] -= job.presence_penalty + job.frequency_penalty * counts
        token = run.sampler(logits, run.history)
        run.logits = None
        run.history.append(token)
        run.generated.append(token)
        run.counts[token] = run.counts.get(token, 0) + 1
        chunk = Chunk(prompt_tokens=len(job.prompt), completion_tokens=len(run.generated), index=run.index)
        if job.top_logprobs is not None:
            chunk.logprobs.append(_logprob(raw, token, job.top_logprobs))
        if token in self.stop_ids:
            chunk.text = self._tail(run)
            return self._end(run, chunk, "stop")
        chunk.text = run.guard.feed(run.decoder.push(token))
        if run.guard.hit:
            return self._end(run, chunk, "stop")
        if len(run.generated) >= job.max_tokens or len(run.history) >= self.context:
            chunk.text += self._tail(run)
            return self._end(run, chunk, "stop" if run.guard.hit else "length")
        if chunk.text or chunk.logprobs:
            job.emit(chunk)
        return True

    @staticmethod
    def _tail(run: _Running) -> str:
        """The text still held back at the end: the decoder's last bytes, and what looked like the start
        of a stop string (unless a stop string is there after all)."""
        tail = run.guard.feed(run.decoder.flush())
        return tail if run.guard.hit else tail + run.guard.pending

    def _end(self, run: _Running, chunk: Chunk, reason: str) -> bool:
        chunk.finish = reason
        run.job.emit(chunk)
        if run.cache is not None:
            self.prompts.keep(run.history[:run.cache.length], run.cache)
        return False

    @staticmethod
    def _fail(run: _Running, error: str) -> None:
        try:
            run.job.emit(Chunk(finish="error", error=error, prompt_tokens=len(run.job.prompt),
                               completion_tokens=len(run.generated), index=run.index))
        except Exception:  # the job's receiver is gone too
            run.job.cancel()


def _logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, min(top, logprobs.numel())) if top else None
    alternatives = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return TokenLogprob(token, float(logprobs[token]), alternatives)
