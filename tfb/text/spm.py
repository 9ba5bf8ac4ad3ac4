"""SentencePiece-style tokenization by piece score, as llama.cpp's llm_tokenizer_spm does it.

The text (spaces already turned into "▁") starts as one symbol per character. Repeatedly, of all pairs of
neighbouring symbols whose concatenation is a vocabulary piece, the one whose piece has the highest score
is merged, the leftmost on a tie. Symbols that end up outside the vocabulary are written as byte tokens
(<0xNN>). This is written here rather than taken from HF `tokenizers`. A BPE model there, fed merges
sorted by score, gives the same ids on the real vocabularies we tried, but it is a different algorithm: it
ranks each pair separately, so two different pairs that make equally scored pieces are not resolved
leftmost, and a character missing from the vocabulary cannot take part in a merge, where llama.cpp lets
it (tests/test_tokenizer.py has small vocabularies where the ids differ). Exact ids are the point, so the
algorithm itself is ported.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class ScoreMerger:
    """Tokenizes one fragment of text with a piece -> id table and per-id scores."""

    def __init__(self, token_to_id: dict[str, int], scores: list[float], byte_token: Callable[[int], int]) -> None:
        self.token_to_id = token_to_id
        self.scores = scores
        self.byte_token = byte_token  # byte value -> token id (raises when the vocabulary has none)

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        pieces: list[str] = list(text)  # "" once merged into the left neighbour
        nxt = list(range(1, len(pieces) + 1))
        nxt[-1] = -1
        prv = list(range(-1, len(pieces) - 1))
        lookup, scores, heappush = self.token_to_id.get, self.scores, heapq.heappush
        queue: list[tuple[float, int, int, int]] = []  # (-score, left, right, length of the merged piece)

        def push(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                merged = pieces[left] + pieces[right]
                token = lookup(merged)
                if token is not None:
                    heappush(queue, (-scores[token], left, right, len(merged)))

        for i in range(1, len(pieces)):
            push(i - 1, i)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            a, b = pieces[left], pieces[right]
            # a pair is stale once either side has merged with something else: its length no longer adds up
            if not a or not b or len(a) + len(b) != size:
                continue
            pieces[left] = a + b
            pieces[right] = ""
            after = nxt[left] = nxt[right]
            if after >= 0:
                prv[after] = left
            push(prv[left], left)
            push(left, after)

        out: list[int] = []
        i = 0
        while i >= 0:
            token = self.token_to_id.get(pieces[i])
            if token is not None:
                out.append(token)
            else:
                out.extend(self.byte_token(b) for b in pieces[i].encode("utf-8"))
            i = nxt[i]
        return out
