"""Autoregressive generation with a KV cache: token ids in, tokens (and streamed text) out.

The prompt runs in one forward pass, then one token per step reuses the cache. Generation stops at a stop
token (EOS, EOT...), at a stop string, after `max_tokens`, or when the context is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tfb.errors import InputError
from tfb.nn.cache import Cache, Snapshot
from tfb.nn.model import Transformer
from tfb.text.sampling import GREEDY, Sampler, Sampling


@dataclass
class Stats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    stop_reason: str = ""  # "stop token", "stop string", "max tokens", "context full", "interrupted"

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


@dataclass
class Session:
    """A cache and the tokens in it, kept across generations (a chat) so that a prompt that extends the
    previous one only computes its new tokens. Recurrent layers cannot forget positions the way a KV cache
    can: the session keeps snapshots of the cache after each prompt (as llama.cpp keeps checkpoints) and goes
    back to the latest one inside the shared prefix, or starts over."""

    cache: Cache
    tokens: list[int] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    max_snapshots: int = 4

    def reuse(self, prompt: Sequence[int]) -> int:
        """Keep the cached prefix shared with `prompt` (at least one prompt token is left to compute)."""
        shared = 0
        for a, b in zip(self.tokens, prompt[:-1], strict=False):
            if a != b:
                break
            shared += 1
        shared = min(shared, self.cache.length)  # the last sampled token was never computed
        if not self.cache.truncate(shared):
            usable = [s for s in self.snapshots if s.length <= shared]
            back = max(usable, key=lambda s: s.length) if usable else self.cache.initial
            self.cache.restore(back)
            shared = back.length
        self.snapshots = [s for s in self.snapshots if s.length <= shared]
        self.tokens = list(prompt)
        return shared

    def checkpoint(self) -> None:
        """Remember the cache as it is now, where going back would otherwise mean starting over."""
        if not self.cache.rewindable:
            self.snapshots = [*self.snapshots, self.cache.snapshot()][-self.max_snapshots:]


@torch.no_grad()
def generate_ids(model: Transformer, prompt: Sequence[int], *, max_tokens: int = 128, sampling: Sampling = GREEDY,
                 stop_ids: Sequence[int] = (), stats: Stats | None = None,
                 session: Session | None = None) -> Iterator[int]:
    """Yield generated token ids one at a time (the stop token, if reached, is yielded last)."""
    if not prompt:
        raise InputError("the prompt has no tokens")
    if max_tokens < 0:
        raise InputError("max_tokens must be >= 0")
    stats = stats if stats is not None else Stats()
    limit = model.config.run_context_length
    if len(prompt) >= limit:
        raise InputError(f"the prompt has {len(prompt)} tokens; the context holds {limit}")
    sampler = Sampler(sampling)
    session = session if session is not None else Session(model.new_cache())
    cache = session.cache
    shared = session.reuse(prompt)
    history = session.tokens
    start = time.perf_counter()
    logits = model(torch.tensor([history[shared:]]), cache, last_only=True)[0, -1]
    session.checkpoint()
    stats.prompt_tokens, stats.prompt_seconds = len(history) - shared, time.perf_counter() - start
    start = time.perf_counter()
    stops = set(stop_ids)
    stats.stop_reason = "max tokens"
    for _ in range(max_tokens):
        token = sampler(logits, history)
        history.append(token)
        stats.generated_tokens += 1
        stats.generate_seconds = time.perf_counter() - start
        yield token
        if token in stops:
            stats.stop_reason = "stop token"
            return
        if len(history) >= limit:
            stats.stop_reason = "context full"
            return
        logits = model(torch.tensor([[token]]), cache, last_only=True)[0, -1]
    # the last sampled token is not in the cache yet; the next generation computes it with its prompt


class TextDecoder(Protocol):
    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class TextTokenizer(Protocol):
    @property
    def stop_ids(self) -> frozenset[int]: ...

    def encode(self, text: str, add_special: bool = True, parse_special: bool | None = None) -> list[int]: ...

    def stream(self, skip_special: bool = False) -> TextDecoder: ...


@dataclass
class StopStrings:
    """Holds back text that may be the start of a stop string, so no part of one is ever emitted."""

    stops: Sequence[str]
    pending: str = ""
    hit: bool = False

    def feed(self, text: str) -> str:
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.hit = True
                out, self.pending = self.pending[:at], ""
                return out
        keep = max((k for stop in self.stops for k in range(1, len(stop)) if self.pending.endswith(stop[:k])),
                   default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out


@dataclass
class Generation:
    """Streams the text generated for a prompt; `stats` is filled in as it goes."""

    model: Transformer
    tokenizer: TextTokenizer
    prompt: str | Sequence[int]
    max_tokens: int = 128
    sampling: Sampling = GREEDY
    stop: Sequence[str] = ()
    add_special: bool = True
    session: Session | None = None
    on_token: Callable[[int], None] | None = None
    stats: Stats = field(default_factory=Stats)
    tokens: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        ids = self.tokenizer.encode(self.prompt, self.add_special) if isinstance(self.prompt, str) \
            else list(self.prompt)
        stops = self.tokenizer.stop_ids
        decoder = self.tokenizer.stream(skip_special=True)
        guard = StopStrings(self.stop)
        for token in generate_ids(self.model, ids, max_tokens=self.max_tokens, sampling=self.sampling,
                                  stop_ids=sorted(stops), stats=self.stats, session=self.session):
            self.tokens.append(token)
            if self.on_token is not None:
                self.on_token(token)
            if token in stops:
                break
            text = guard.feed(decoder.push(token))
            if text:
                yield text
            if guard.hit:
                self.stats.stop_reason = "stop string"
                return
        tail = guard.feed(decoder.flush())
        if guard.hit:
            self.stats.stop_reason = "stop string"
        elif guard.pending:
            tail += guard.pending
        if tail:
            yield tail


def generate(model: Transformer, tokenizer: TextTokenizer, prompt: str | Sequence[int],
             **options: object) -> Generation:
    """Stream text for a prompt: `for piece in tfb.generate(model, tok, "Hello"): print(piece, end="")`.

    Options: max_tokens, sampling (a tfb.Sampling), stop (stop strings), add_special (add BOS as the
    vocabulary says), session (a Session to reuse the cache across calls), on_token. The returned
    object's `stats` and `tokens` fill in while iterating.
    """
    return Generation(model, tokenizer, prompt, **options)  # type: ignore[arg-type]
