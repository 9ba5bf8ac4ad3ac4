"""tfb: transformer builder. Each architecture is a YAML spec; one interpreter runs them from GGUF files.

    model = tfb.load("model.gguf")        # torch.nn.Module; model(input_ids) -> logits
    tok = tfb.load_tokenizer("model.gguf")
    for piece in tfb.generate(model, tok, "Once upon a time", max_tokens=64):
        print(piece, end="")
    spec = tfb.load_spec("specs/x.yaml")  # a validated spec

Torch is imported only when a model is loaded, so that spec tooling starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tfb.errors import TfbError
from tfb.spec import Spec, load_spec

if TYPE_CHECKING:
    from tfb.build import load
    from tfb.text.chat_template import render_chat_template
    from tfb.text.generate import Session, generate
    from tfb.text.sampling import Sampling
    from tfb.text.tokenizer import load_tokenizer

__all__ = ["Sampling", "Session", "Spec", "TfbError", "generate", "load", "load_spec", "load_tokenizer",
           "render_chat_template"]
__version__ = "0.1.0"

_LAZY = {"load": "tfb.build", "load_tokenizer": "tfb.text.tokenizer", "render_chat_template": "tfb.text.chat_template",
         "generate": "tfb.text.generate", "Session": "tfb.text.generate", "Sampling": "tfb.text.sampling"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfb' has no attribute {name!r}")
