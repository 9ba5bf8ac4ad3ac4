"""Per-layer input embeddings and the per-layer output scale: what a block adds after its mixer and
feed-forward (the math: docs/spec-language.md, embedding.per_layer and block.output_scale).

With L layers of per-layer width d, hidden width n, token ids t and the scaled input embedding x0:
  P = (rmsnorm_w(W_model · x0 / sqrt(n), per layer slice of d) + E_pl[t] · sqrt(d)) / sqrt(2)   [.., L, d]
and block i, after its feed-forward, adds
  x += post_norm(W_proj,i · (act(W_gate,i · x) * P[.., i, :]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tfb.nn.linear import Embedding, Linear, check_shape
from tfb.nn.mlp import Activation
from tfb.nn.norm import Norm


class PerLayerInputs(nn.Module):
    """The model-wide part: one [.., layers, width] tensor of every layer's input slice per token."""

    def __init__(self, vocab: int, hidden: int, layers: int, width: int, norm: Norm) -> None:
        super().__init__()
        self.hidden, self.layers, self.width = hidden, layers, width
        self.token_embd = Embedding(vocab, layers * width)
        self.model_proj = Linear(hidden, layers * width)
        self.proj_norm = norm

    def forward(self, ids: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        shape = (*ids.shape, self.layers, self.width)
        tokens = self.token_embd(ids, x0.dtype).view(shape) * math.sqrt(self.width)
        context = self.proj_norm((self.model_proj(x0) / math.sqrt(self.hidden)).view(shape))
        return (context + tokens) / math.sqrt(2.0)


class PerLayerInput(nn.Module):
    """One block's part: a gated projection of its slice, added to the block's output."""

    def __init__(self, layer: int, hidden: int, width: int, activation: Activation, post_norm: Norm) -> None:
        super().__init__()
        self.layer, self.activation = layer, activation
        self.inp_gate = Linear(hidden, width)
        self.proj = Linear(width, hidden)
        self.post_norm = post_norm

    def forward(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        own = inputs[..., self.layer, :].to(x.dtype)
        return x + self.post_norm(self.proj(self.activation(self.inp_gate(x)) * own))


class OutputScale(nn.Module):
    """A learned scalar on a block's output."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return (1,)

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        check_shape(name, tuple(weight.shape), (1,))
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.weight is None else x * self.weight.to(x.dtype)
