"""The `dense` feed-forward kind: one MLP (tfb.nn.mlp)."""

from __future__ import annotations

from tfb.config import ModelConfig
from tfb.nn.kinds import BuildContext
from tfb.nn.mlp import MLP, activation_of
from tfb.spec.kinds.dense import Dense

KIND = "dense"
TARGETS = {
    "ffn_gate": ("gate", "set_weight"), "ffn_gate_bias": ("gate", "set_bias"),
    "ffn_up": ("up", "set_weight"), "ffn_up_bias": ("up", "set_bias"),
    "ffn_down": ("down", "set_weight"), "ffn_down_bias": ("down", "set_bias"),
}


def build(section: Dense, c: ModelConfig, ctx: BuildContext) -> MLP:
    return MLP(c.hidden_size, c.intermediate_size, gated=section.gated, fused_gate_up=section.gate_up == "fused",
               activation=activation_of(section, c))
