"""The `none` feed-forward kind: a block without a feed-forward (Mamba-2's blocks are a norm and a mixer
only). The block then has no feed-forward norms either: x + mixer(norm(x)) is the whole block."""

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
