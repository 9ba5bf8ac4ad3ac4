"""The `dense` feed-forward kind: down(act(gate(x)) * up(x)), or down(act(up(x))) when not gated; the
hidden width is the config field `intermediate_size` (per layer where the file gives an array)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tfb.spec.base import Need, add_slot
from tfb.spec.kinds._mlp import MLPShape

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class Dense(MLPShape):
    role: ClassVar[str] = "ffn"
    SLOTS: ClassVar[tuple[str, ...]] = ("ffn_gate", "ffn_up", "ffn_down", "ffn_gate_bias", "ffn_up_bias",
                                        "ffn_down_bias")

    kind: Literal["dense"] = "dense"

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        out: dict[str, Need] = {}
        projections = ["ffn_up", "ffn_down"]
        if self.gated and self.gate_up == "separate":
            projections.append("ffn_gate")
        for slot in projections:
            out[slot] = "required"
            add_slot(out, f"{slot}_bias", self.bias)
        return out

    def check(self, c: Any) -> str | None:
        return "intermediate_size (feed_forward_length) is 0 in a dense layer" if c.intermediate_size == 0 else None
