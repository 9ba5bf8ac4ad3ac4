"""The `none` mixer kind: no module (the block's first norm feeds its feed-forward; no cache state)."""

from __future__ import annotations

from tfb.config import ModelConfig
from tfb.nn.kinds import BuildContext
from tfb.spec.kinds.none import NoMixer

KIND = "none"
TARGETS: dict[str, tuple[str, str]] = {}


def build(section: NoMixer, c: ModelConfig, ctx: BuildContext) -> None:
    return None
