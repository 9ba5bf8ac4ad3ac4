"""tfb: transformer builder. Each architecture is a YAML spec; one interpreter runs them from GGUF files.

    model = tfb.load("model.gguf")        # torch.nn.Module; model(input_ids) -> logits
    spec = tfb.load_spec("specs/x.yaml")  # a validated spec

Torch is imported only when a model is loaded, so that spec tooling starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tfb.errors import TfbError
from tfb.spec import Spec, load_spec

if TYPE_CHECKING:
    from tfb.build import load

__all__ = ["Spec", "TfbError", "load", "load_spec"]
__version__ = "0.1.0"

_LAZY = {"load": "tfb.build"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfb' has no attribute {name!r}")
