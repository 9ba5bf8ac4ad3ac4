"""Choosing the next token from logits, with llama.cpp's sampler chain and its defaults.

The chain runs in llama.cpp's order: repetition penalty, top-k, top-p, min-p, temperature, then a draw.
Temperature 0 means greedy. A seed makes draws reproducible.

The draw is inverse transform sampling: one uniform number u per token, and the token whose span of the
cumulative distribution holds u times the total (sums in float64, block by block: a vocabulary's worth of
exponentials, as torch.multinomial draws for one sample, costs milliseconds a token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tfb.errors import InputError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


def apply_repeat_penalty(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> torch.Tensor:
    """Make recently seen tokens less likely: positive logits divided, negative ones multiplied."""
    if penalty == 1.0 or not recent:
        return logits
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long)
    seen = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return out


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Top-k, then top-p, then min-p; what is filtered out becomes -inf. The best token always stays."""
    out = logits.clone()
    if s.top_k and s.top_k < out.numel():
        kth = torch.topk(out, s.top_k).values[-1]
        out[out < kth] = -torch.inf
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the better tokens
        out[order[before >= s.top_p]] = -torch.inf
    if s.min_p > 0.0:
        probs = torch.softmax(out, dim=-1)
        out[probs < s.min_p * probs.max()] = -torch.inf
    return out


DRAW_BLOCK = 1024  # probabilities summed per block of the two-level cumulative sum


def argmax(logits: torch.Tensor) -> int:
    """The index of the largest of 1-D float logits, the first on a tie (as torch.argmax; numpy's is several
    times faster on one thread)."""
    return int(logits.numpy().argmax())


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """A token drawn with probability probs[i] / probs.sum() (1-D, >= 0, not all 0): the first whose
    cumulative sum passes u * total for one uniform u. Blocks' sums first, then the chosen block's own
    cumulative sum, both in float64, so rounding moves no token's share measurably."""
    n = probs.numel()
    padded = F.pad(probs, (0, -n % DRAW_BLOCK)).view(-1, DRAW_BLOCK)
    sums = padded.sum(1, dtype=torch.float64).cumsum(0)
    target = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(sums[-1])
    block = _first_above(sums, target)
    inner = padded[block].to(torch.float64).cumsum(0)
    return block * DRAW_BLOCK + _first_above(inner, target - (float(sums[block - 1]) if block else 0.0))


def _first_above(cumulative: torch.Tensor, target: float) -> int:
    """The first index whose cumulative sum exceeds target; where rounding leaves none, the last index that
    adds anything."""
    index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64), right=True))
    if index < cumulative.numel():
        return index
    return int(torch.searchsorted(cumulative, cumulative[-1:], right=False))


class Sampler:
    def __init__(self, sampling: Sampling = GREEDY) -> None:
        self.sampling = sampling
        self.generator = torch.Generator()
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """The next token for 1-D logits, given the tokens so far."""
        s = self.sampling
        recent = history[-s.repeat_last_n:] if s.repeat_last_n else []
        logits = apply_repeat_penalty(logits.float(), recent, s.repeat_penalty)
        if s.greedy:
            return argmax(logits)
        logits = filter_logits(logits, s) / s.temperature
        return draw(torch.softmax(logits, dim=-1), self.generator)
