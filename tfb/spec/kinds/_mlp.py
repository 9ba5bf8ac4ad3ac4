"""What the dense feed-forward and each expert share: the shape of one MLP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tfb.spec.base import Activation, KindSection, Presence


class MLPShape(KindSection):
    gated: bool = Field(True, description="act(gate(x)) * up(x); false: act(up(x))")
    gate_up: Literal["separate", "fused"] = Field(
        "separate", description="fused: one up tensor holds [gate; up], split in half")
    activation: Activation = Field("silu", description="activation function")
    bias: Presence = Field("none", description="biases of the up, gate and down projections")
    clamp_gate: Literal["after_activation", "before_activation"] = Field(
        "after_activation", description="where the `swiglu_limit` clamp acts on the gate: on act(gate) "
        "(act(gate) <= l) or on gate itself (act(min(gate, l))); up is clamped to [-l, l] either way")

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        if not self.gated and self.gate_up == "fused":
            return [(("gate_up",), "a fused gate/up projection needs gated: true")]
        return []
