"""Comparing tfb's logits with a reference model's."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch


def assert_logits_match(ours: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4) -> None:
    """max |ours - reference| <= rel * max |reference|, and the same argmax at every position."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().item()
    diff = (ours - reference).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} x max|logit| {scale:.3g}"
    assert torch.equal(ours.argmax(-1), reference.argmax(-1)), "argmax differs"


def ids_for(vocab: int, batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(batch * 100 + seq))


def compare(model: torch.nn.Module, reference: torch.nn.Module, shapes: Sequence[tuple[int, int]],
            check: Callable[[torch.Tensor, torch.Tensor], None] = assert_logits_match) -> None:
    """tfb's logits against the reference's (a transformers causal LM) for random ids of each shape."""
    for batch, seq in shapes:
        ids = ids_for(model.config.vocab_size, batch, seq)  # type: ignore[union-attr]
        with torch.no_grad():
            check(model(ids), reference(ids).logits)


def assert_decoding_equals_full(model: Any, length: int = 30, rel: float = 1e-4) -> tuple[Any, Any]:
    """Decoding with the model's cache, in uneven chunks and one token at a time, gives the logits of one
    full forward pass, within `rel` of the largest logit. Returns the two caches (chunked, one by one)."""
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(5))
    cuts = [0, length * 11 // 30, length * 12 // 30, length * 25 // 30, length]
    with torch.no_grad():
        full = model(ids)
        chunked, single = model.new_cache(), model.new_cache()
        in_chunks = torch.cat([model(ids[:, a:b], chunked) for a, b in itertools.pairwise(cuts)], dim=1)
        one_by_one = torch.cat([model(ids[:, t:t + 1], single) for t in range(length)], dim=1)
    for steps in (in_chunks, one_by_one):
        torch.testing.assert_close(steps, full, atol=rel * full.abs().max().item(), rtol=0)
    return chunked, single


def record_routes(routers: Sequence[Any]) -> list[torch.Tensor]:
    """Wrap each expert layer's `route` so that the experts it chooses ([tokens, k]) are recorded, in call order."""
    chosen: list[torch.Tensor] = []

    def recording(route: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., Any]:
        def wrapper(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            experts, weights = route(x)
            chosen.append(experts)
            return experts, weights
        return wrapper

    for moe in routers:
        moe.route = recording(moe.route)
    return chosen


def greedy_prompt(vocab: int, length: int = 5) -> list[int]:
    """A fixed random prompt for greedy-generation comparisons."""
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(7)).tolist()[0]


def transformers_greedy(reference: Any, prompt: list[int], steps: int) -> list[int]:
    """transformers' own greedy continuation of `prompt`, `steps` tokens, without stopping at end-of-sequence."""
    reference.generation_config.eos_token_id = None
    out = reference.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_greedy_equals_transformers(model: Any, reference: Any, steps: int, vocab: int | None = None) -> None:
    """tfb's greedy generation (with its cache) from greedy_prompt(vocab, default the model's) equals
    transformers' own, token for token."""
    from tfb.text.generate import generate_ids
    from tfb.text.sampling import GREEDY

    prompt = greedy_prompt(vocab if vocab is not None else model.config.vocab_size)
    assert list(generate_ids(model, prompt, max_tokens=steps, sampling=GREEDY)) == \
        transformers_greedy(reference, prompt, steps)
