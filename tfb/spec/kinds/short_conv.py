"""The `short_conv` mixer kind: a gated short causal convolution (LFM2's conv layers). Sizes: the hidden size
h and the kernel length L = `shortconv_l_cache` (the file's shortconv.l_cache).

Per position t, with x_t the (normed) input of the layer:
  [B_t ; C_t ; v_t] = W_in x_t              three vectors of h (shortconv_in_proj [3h, h], in that order)
  u_t   = B_t * v_t                         elementwise
  z_t   = sum_{k=0}^{L-1} w[:, k] * u_{t-L+1+k}      depthwise causal convolution (shortconv_conv [h, L]),
                                            u_s = 0 for s < 0 (before the first position)
  y_t   = W_out (C_t * z_t)                 shortconv_out_proj [h, h]
The layer's state between calls is the last L-1 values of u (per channel, float32): a fixed size, whatever
the context length; it cannot go back to an earlier position (snapshots keep copies instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tfb.spec.base import ConfigField, KindSection, Need

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class ShortConv(KindSection):
    """y = W_out (C * conv(B * v)), [B; C; v] = W_in x, a depthwise causal convolution of L positions."""

    role: ClassVar[str] = "mixer"
    SLOTS: ClassVar[tuple[str, ...]] = ("shortconv_in_proj", "shortconv_conv", "shortconv_out_proj")
    FIELDS: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("shortconv_l_cache", "int", "kernel length L of the short convolution (its state keeps the "
                    "last L - 1 inputs)", 0, "nonnegative"),
    )

    kind: Literal["short_conv"] = "short_conv"

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        return {slot: "required" for slot in self.SLOTS}

    def check(self, c: Any) -> str | None:
        if c.shortconv_l_cache <= 0:
            return (f"`shortconv_l_cache` = {c.shortconv_l_cache} (the file's shortconv.l_cache) must be at least "
                    "1: it is the kernel length of the short convolution")
        if c.hidden_size <= 0:
            return f"`hidden_size` = {c.hidden_size} must be positive in a short convolution layer"
        return None
