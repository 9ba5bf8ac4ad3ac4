"""The whole decoder: embeddings, blocks, final norm and output projection."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tfb.config import ModelConfig
from tfb.errors import InputError
from tfb.nn.block import Block
from tfb.nn.cache import Cache, RowCaches, Step
from tfb.nn.ffn.routed import ExpertLinear
from tfb.nn.linear import Embedding, Linear
from tfb.nn.norm import Norm
from tfb.nn.per_layer import PerLayerInputs
from tfb.nn.rotary import Rotary
from tfb.nn.step import NativeStep

NATIVE_STEP_ROWS = 64  # the most sequences a native decoding step takes at once (a plan per row count)


class Transformer(nn.Module):
    """`model(input_ids)` -> float32 logits [batch, seq, vocab]; pass a Cache (`new_cache()`) to decode
    incrementally."""

    def __init__(self, config: ModelConfig, blocks: list[Block], rotaries: list[Rotary], *,
                 final_norm: Norm | None, learned_positions: bool, dtype: torch.dtype, spec_name: str,
                 per_layer_inputs: PerLayerInputs | None = None) -> None:
        super().__init__()
        self.config, self.dtype, self.spec_name = config, dtype, spec_name
        self.cache_dtype: torch.dtype | None = None  # the KV cache's element type; None: the activations'
        self.token_embd = Embedding(config.vocab_size, config.hidden_size)
        self.position_embd = Embedding(config.context_length, config.hidden_size) if learned_positions else None
        self.blocks = nn.ModuleList(blocks)
        self.output_norm = final_norm
        self.output = Linear(config.hidden_size, config.vocab_size)
        self.rotaries = rotaries  # every distinct rope of the layers (shared between layers)
        self.per_layer_inputs = per_layer_inputs
        self.native_steps: dict[int, NativeStep | None] = {}  # by row count, planned on first use (tfb.nn.step)
        self.native_step_state = "unplanned"  # "unplanned", "planned", "unplannable" or "off"

    def tensor_shape(self, method: str) -> tuple[int, ...]:
        return self._factored()[0].tensor_shape(method)

    def set_freq_factors(self, name: str, factors: torch.Tensor) -> None:
        """Frequency factors apply to every layer's rope, as in llama.cpp (except the ropes a spec keeps
        them from: attention rope.factors)."""
        for rotary in self._factored():
            rotary.set_freq_factors(name, factors)

    def _factored(self) -> list[Rotary]:
        return [r for r in self.rotaries if r.params.factors] or self.rotaries

    def use_int8_activations(self, enabled: bool = True) -> None:
        """Round each activation row to 8 bits in the products of packed weights whose type has such
        products (decoding steps, and longer prompts up to `tfb.quant.native.int8_rows` rows), as llama.cpp
        does for quantized weights: faster, and no longer the exact float32 product (see tfb.quant.native,
        int8.c)."""
        for module in self.modules():
            if isinstance(module, (Linear, ExpertLinear)):
                module.use_int8_activations(enabled)
        self.use_native_step(self.native_step_state != "off")  # planned again with the new products

    def use_native_step(self, enabled: bool = True) -> None:
        """Run a decoding step (one new token of each of up to NATIVE_STEP_ROWS sequences) as one native call
        where every module can be planned (the default; tfb.nn.step), or always through the modules."""
        self.native_steps, self.native_step_state = {}, "unplanned" if enabled else "off"

    def new_cache(self) -> Cache:
        """An empty cache: each layer's mixer state (keys and values of attention layers)."""
        mixers: list[Any] = [block.mixer for block in self.blocks]
        return Cache([None if mixer is None else mixer.new_state(self.cache_dtype) for mixer in mixers])

    def forward(self, input_ids: torch.Tensor, cache: Cache | RowCaches | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits of `input_ids` after what `cache` holds; with RowCaches each row continues its own
        sequence (a batched decoding step of separate sequences)."""
        ids = self._check_ids(input_ids)
        if ids.shape[1] == 1 and self.native_step_state != "off" and (
                isinstance(cache, RowCaches) or (isinstance(cache, Cache) and ids.shape[0] == 1)):
            logits = self._native_step(ids, cache)  # one token of each sequence
            if logits is not None:
                return logits
        c = self.config
        batch, seq = ids.shape
        step = cache.step(batch, seq, ids.device) if cache is not None else \
            Step(torch.arange(seq, device=ids.device).expand(batch, seq), 0)
        positions = step.positions
        x = self.token_embd(ids, self.dtype)
        if c.embedding_scale != 1.0:
            x = x * c.embedding_scale
        if self.position_embd is not None:
            last = int(positions[:, -1].max())
            if last >= c.context_length:
                raise InputError(f"position {last} is past the {c.context_length} learned positions")
            x = x + self.position_embd(positions, self.dtype)
        if self.per_layer_inputs is not None:
            step.layer_inputs = self.per_layer_inputs(ids, x)
        for i, block in enumerate(self.blocks):
            x = block(x, step, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.commit(seq)
        if last_only:
            x = x[:, -1:]
        if self.output_norm is not None:
            x = self.output_norm(x)
        return self._final(self.output(x).float())

    def _final(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.logit_scale != 1.0:
            logits = logits / c.logit_scale
        if c.final_softcap:
            logits = torch.tanh(logits / c.final_softcap) * c.final_softcap
        return logits

    def _native_step(self, ids: torch.Tensor, cache: Cache | RowCaches) -> torch.Tensor | None:
        """The logits of one token a row by the planned native step; None where the model or these caches
        cannot take it (the module path then runs)."""
        rows = ids.shape[0]
        if self.native_step_state == "unplanned":
            plannable = self.position_embd is None and self.per_layer_inputs is None
            first = NativeStep.for_model(self) if plannable else None
            self.native_steps = {1: first}
            self.native_step_state = "planned" if first is not None else "unplannable"
        if self.native_step_state != "planned" or rows > NATIVE_STEP_ROWS:
            return None
        if rows not in self.native_steps:  # a module may take one row but not several: None is kept too
            self.native_steps[rows] = NativeStep.for_model(self, rows)
        step = self.native_steps[rows]
        if step is None:
            return None
        x = self.token_embd(ids, self.dtype)
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        logits = step(x, cache.caches if isinstance(cache, RowCaches) else [cache])
        if logits is None:
            return None
        cache.commit(1)
        return self._final(logits.view(rows, 1, -1))

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise InputError("input_ids must be an integer tensor of shape [batch, seq]")
        if ids.numel() == 0:
            raise InputError("input_ids is empty")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise InputError(f"token ids must be in [0, {self.config.vocab_size}), got {low}..{high}")
        return ids.long()
