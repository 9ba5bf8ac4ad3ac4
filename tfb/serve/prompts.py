"""Reusing computed prompts across requests (prompt caching): the caches of finished sequences
are kept, and a new request whose prompt starts with the tokens one of them holds goes on from a copy of
that cache, computing only the rest of its prompt. A multi-turn chat resends the whole conversation each
turn, so each turn's prompt then costs only its new messages.

Memory is bounded: the kept caches hold at most `budget` bytes in all (Cache.nbytes), the least recently
used going first. A cache whose states cannot forget positions (recurrent states) is reused only when all
it holds is a prefix of the new prompt.
"""

from __future__ import annotations

from tfb.nn.cache import Cache


class PromptCache:
    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        # the tokens each cache holds, the cache, its bytes; the most recently used last
        self.entries: list[tuple[list[int], Cache, int]] = []

    def keep(self, tokens: list[int], cache: Cache) -> None:
        """Keep a finished sequence's cache, which holds `tokens`."""
        size = cache.nbytes() if self.budget else 0
        if not tokens or not self.budget or size > self.budget or len(tokens) != cache.length:
            return
        if any(held[:len(tokens)] == tokens for held, _, _ in self.entries):
            return  # a kept cache holds these tokens and more
        self.entries = [e for e in self.entries if tokens[:len(e[0])] != e[0]]  # these hold less
        self.entries.append((tokens, cache, size))
        while sum(e[2] for e in self.entries) > self.budget:
            self.entries.pop(0)

    def take(self, prompt: list[int]) -> Cache | None:
        """A new cache holding the longest prefix of `prompt` a kept cache can give (leaving at least the last
        prompt token to compute, whose logits start the generation); None if none shares a token with it."""
        best, length = -1, 0
        for i, (held, cache, _) in enumerate(self.entries):
            common = _shared(held, prompt[:-1])
            if common > length and (common == len(held) or cache.rewindable):
                best, length = i, common
        if best < 0:
            return None
        entry = self.entries.pop(best)
        self.entries.append(entry)
        return entry[1].fork(length)


def _shared(a: list[int], b: list[int]) -> int:
    """How many tokens a and b start with in common."""
    n = min(len(a), len(b))
    return n if a[:n] == b[:n] else next(i for i, (x, y) in enumerate(zip(a[:n], b[:n], strict=True)) if x != y)
