"""Comparing tfb's logits with a reference model's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
