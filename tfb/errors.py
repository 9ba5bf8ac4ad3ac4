"""One exception family for everything tfb rejects.

Every message names the place (spec file:line:column and field, GGUF file and key or tensor) and what
would fix it, so the command line can print it as is and exit non-zero without a traceback.
"""

from __future__ import annotations


class TfbError(Exception):
    """Base of every error tfb raises on bad input."""


class TfbWarning(UserWarning):
    """Input tfb accepts but that probably does not do what the user wants (the command line prints it as
    one `tfb: warning:` line)."""


class SpecError(TfbError):
    """A spec file is malformed, inconsistent or asks for something the builder cannot do."""


class GGUFError(TfbError):
    """A GGUF file is malformed, truncated, hostile or of a kind tfb does not read."""


class ConfigError(TfbError):
    """The metadata of a file does not give a usable model configuration for its spec."""


class WeightError(TfbError):
    """A tensor the spec needs is missing, of the wrong shape, or of an unsupported type."""


class TemplateError(TfbError):
    """A chat template failed to render, raised on purpose, or tried something unsafe."""


class TokenizerError(TfbError):
    """A tokenizer could not be built from the file's metadata."""


def location(path: object, line: int | None = None, column: int | None = None) -> str:
    """`file:line:column` with the parts that are known."""
    where = str(path)
    if line is not None:
        where += f":{line}"
        if column is not None:
            where += f":{column}"
    return where


class InputError(TfbError, ValueError):
    """A caller passed something the model cannot take (token ids out of range, a wrong shape...)."""
