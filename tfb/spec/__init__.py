"""The spec language: schema, safe YAML loading with `extends`, and the spec search path."""

from tfb.spec.loader import load_spec
from tfb.spec.schema import Spec

__all__ = ["Spec", "load_spec"]
