"""Reusing computed prompts across requests (prompt caching): the caches of finished sequences
are kept, and a new request whose prompt starts with the tokens one of them holds goes on from a copy of
that cache, computing only the rest of its prompt. A multi-turn chat resends the whole conversation each
turn, so each turn's prompt then costs only its new messages.

Memory is bounded: the kept caches hold at most `budget` positions in all (by default the server's context,
i.e. one full cache more), the least recently used going first. A cache whose states cannot forget
positions (recurrent states) is reused only when all it holds is a prefix of the new prompt.
"""

from __future__ import annotations

from tfb.nn.cache import Cache


class PromptCache:
    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self.entries: list[tuple[list[int], Cache]] = []  # the tokens each cache holds; most recently used last

    def keep(self, tokens: list[int], cache: Cache) -> None:
        """Keep a finished sequence's cache, which holds `tokens`."""
        if not tokens or len(tokens) > self.budget or len(tokens) != cache.length:
            return
        if any(held[:len(tokens)] == tokens for held, _ in self.entries):
            return  # a kept cache holds these tokens and more
        self.entries = [(held, c) for held, c in self.entries if tokens[:len(held)] != held]  # these hold less
        self.entries.append((tokens, cache))
        while sum(len(held) for held, _ in self.entries) > self.budget:
            self.entries.pop(0)

    def take(self, prompt: list[int]) -> Cache | None:
        """A new cache holding the longest prefix of `prompt` a kept cache can give (leaving at least the last
        prompt token to compute, whose logits start the generation); None if none shares a token with it."""
        best, length = -1, 0
        for i, (held, cache) in enumerate(self.entries):
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
