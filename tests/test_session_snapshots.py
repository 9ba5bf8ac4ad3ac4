"""A session over layers whose state cannot forget positions (recurrent mixers): it goes back to a snapshot
inside the shared prefix, or starts over, and never truncates such a state."""

from __future__ import annotations

from tfb.nn.cache import Cache, SequenceState
from tfb.text.generate import Session


class Running:
    """A recurrent state in miniature: the sum of the tokens seen, no way back."""

    rewindable = False

    def __init__(self, total: int = 0) -> None:
        self.total = total

    def truncate(self, length: int) -> None:
        raise AssertionError("a recurrent state was truncated")

    def copy(self) -> Running:
        return Running(self.total)


def _feed(session: Session, tokens: list[int]) -> None:
    """What a forward pass over `tokens` does to the cache."""
    state = session.cache.layers[0]
    assert isinstance(state, Running)
    state.total += sum(tokens)
    session.cache.commit(len(tokens))


def _turn(session: Session, prompt: list[int], reply: list[int]) -> int:
    shared = session.reuse(prompt)
    _feed(session, prompt[shared:])
    session.checkpoint()
    for token in reply[:-1]:  # the last sampled token is computed with the next prompt
        session.tokens.append(token)
        _feed(session, [token])
    session.tokens.append(reply[-1])
    return shared


def test_a_recurrent_session_goes_back_to_its_latest_snapshot_in_the_shared_prefix() -> None:
    session = Session(Cache([Running(), None]))
    assert _turn(session, [1, 2, 3], [10, 20]) == 0
    assert session.cache.length == 4 and session.cache.layers[0].total == 16
    # the next prompt extends the whole history: nothing to undo
    assert _turn(session, [1, 2, 3, 10, 20, 5], [7]) == 4
    assert session.cache.layers[0].total == 16 + 20 + 5
    # an edited last turn: back to the snapshot after the first prompt (position 3), not to 0
    shared = session.reuse([1, 2, 3, 10, 99])
    assert shared == 3 and session.cache.length == 3
    assert session.cache.layers[0].total == 6
    # nothing shared: the empty cache
    assert session.reuse([4, 4]) == 0 and session.cache.layers[0].total == 0


def test_a_rewindable_cache_is_truncated_and_keeps_no_snapshots() -> None:
    session = Session(Cache([SequenceState(2)]))
    session.cache.commit(5)
    session.tokens = [1, 2, 3, 4, 5]
    session.checkpoint()
    assert session.snapshots == []
    assert session.reuse([1, 2, 9]) == 2 and session.cache.length == 2
