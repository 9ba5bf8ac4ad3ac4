"""The `none` feed-forward kind: no module (the block skips its feed-forward branch and norms)."""

from __future__ import annotations

from tfb.config import ModelConfig
from tfb.nn.kinds import BuildContext
from tfb.spec.kinds.none import NoFFN

KIND = "none"
TARGETS: dict[str, tuple[str, str]] = {}


def build(section: NoFFN, c: ModelConfig, ctx: BuildContext) -> None:
    return None
