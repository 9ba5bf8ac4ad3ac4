"""The `none` kinds: a block without a feed-forward, or without a mixer.

No feed-forward (Mamba-2's blocks are a norm and a mixer only): the block has no feed-forward norms either,
x + mixer(norm(x)) is the whole block. No mixer (hybrids whose every layer is ONE of a mixer or a
feed-forward after one norm, the kind chosen per layer by the file's arrays): the block's first norm
(attn_norm) serves the feed-forward, x + ffn(norm(x)) is the whole block, with no ffn_norm and no
post-attention norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from tfb.spec.base import KindSection, Need

if TYPE_CHECKING:
    from tfb.spec.schema import Spec
    from tfb.spec.slots import FileFacts


class NoFFN(KindSection):
    """No feed-forward in these layers (nor its norms)."""

    role: ClassVar[str] = "ffn"
    ABSENT: ClassVar[bool] = True

    kind: Literal["none"] = "none"

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        return {}


class NoMixer(KindSection):
    """No mixer in these layers: the block's first norm feeds the feed-forward."""

    role: ClassVar[str] = "mixer"
    ABSENT: ClassVar[bool] = True

    kind: Literal["none"] = "none"

    def slots(self, spec: Spec, facts: FileFacts) -> dict[str, Need]:
        return {}
