"""Rendering chat templates (Jinja) the way transformers does, inside a bounded sandbox.

The environment matches transformers' (utils/chat_template_utils.py): trim_blocks and lstrip_blocks on,
the loopcontrols extension, a {% generation %} block that renders its body, `raise_exception`,
`strftime_now`, a `tojson` that writes JSON like json.dumps with ensure_ascii=False, a `dict` helper and a
namespace that refuses underscore names; the template sees `messages`, `tools`, `documents`,
`add_generation_prompt` and the caller's variables, all rebuilt from plain data. Unlike transformers, the
sandbox bounds time and size (template_sandbox) and every failure is a tfb TemplateError.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import SecurityError

from tfb.errors import TemplateError
from tfb.text.template_limits import BudgetExceeded, RenderLimits, activate, deactivate
from tfb.text.template_sandbox import BoundedSandbox


class _RaisedByTemplate(jinja2.TemplateError):
    """raise_exception(message) from inside a template."""


def _raise_exception(message: Any) -> None:
    raise _RaisedByTemplate(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers' replacement for jinja's tojson, which escapes HTML characters
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict` as templates see it: building dicts, nothing to reach through."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """A namespace that refuses names starting with an underscore (they lead to Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's signature trick: `self=` is a name
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace attribute may not start with an underscore: {name!r}")


class _GenerationBlock(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} marks assistant text for training masks; here it just renders."""

    tags = {"generation"}  # noqa: RUF012 - jinja reads this class attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _environment() -> BoundedSandbox:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.set_filter("tojson", _tojson)
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_Namespace)
    return env


_ENV = _environment()


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    return _ENV.compile_guarded(template)


def plain_data(value: Any) -> Any:
    """`value` rebuilt from JSON-like types, so that a template can reach no caller object's methods (as
    transformers does; anything else becomes a placeholder naming its type)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                         *, limits: RenderLimits | None = None, **variables: Any) -> str:
    """Render `template` for `messages` as transformers' apply_chat_template(tokenize=False) would.

    Extra keyword arguments (bos_token, eos_token, tools, enable_thinking...) become template variables.
    Raises TemplateError with the template's own message when it calls raise_exception, and TemplateError
    when it fails, tries something unsafe, or runs past `limits` (time, output size, range length).
    """
    limits = limits or RenderLimits()
    if not isinstance(template, str):
        raise TemplateError(f"a chat template must be a string, got {type(template).__name__}")
    if len(template) > limits.max_template_chars:
        raise TemplateError(f"chat template of {len(template)} characters is over the limit of "
                            f"{limits.max_template_chars}")
    messages = list(messages)
    for message in messages:
        if not isinstance(message, Mapping):
            raise TemplateError(f"chat messages must be mappings (role, content, ...), got {message!r:.80}")
    state, token = activate(limits)
    try:
        context = plain_data({"tools": None, "documents": None, **variables, "messages": messages,
                              "add_generation_prompt": bool(add_generation_prompt)})
        compiled = _compile(template)
        out: list[str] = []
        for chunk in compiled.generate(**context):
            state.output += len(chunk)
            state.size(state.output, "the output")
            state.tick()
            out.append(chunk)
        return "".join(out)
    except _RaisedByTemplate as e:
        raise TemplateError(e.message or "") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    except BudgetExceeded as e:
        raise TemplateError(f"chat template stopped: {e}") from None
    except SecurityError as e:
        raise TemplateError(f"chat template tried something unsafe: {e}") from None
    except RecursionError:
        raise TemplateError("chat template recursed too deeply") from None
    except MemoryError:
        raise TemplateError("chat template ran out of memory") from None
    except Exception as e:  # anything else a template can raise (TypeError, UndefinedError, ...)
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        deactivate(token)
