"""A jinja2 sandbox with a budget, for chat templates that come from untrusted model files.

jinja2's ImmutableSandboxedEnvironment already blocks attribute tricks (`__class__`, `__globals__`...) and
mutation of lists and dicts. On top of that this environment
- raises at once on an unsafe attribute, instead of rendering an empty string and carrying on;
- bounds time: loops, calls, operators, filters and output check a deadline (loops through a rewrite of
  the parsed template, since a for loop calls nothing the sandbox could intercept);
- bounds size: `range` is capped, the operations that make big things out of small ones (`*`, `+`, `~`,
  `%` and str.format widths, padding, replace, join) are checked before they run, and every value a call,
  operator, filter, literal or output expression makes is weighed (see template_limits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from tfb.text.template_limits import (
    BudgetExceeded,
    budget,
    check_binop,
    check_percent_format,
    check_str_format,
    check_str_method,
)


def _filter_checks() -> dict[str, Callable[..., None]]:
    """Filter name -> check of (value, *args, **kwargs) before the filter runs."""

    def center(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> None:
        budget().width(kwargs.get("width", width), "the center filter's width")

    def indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
        width = kwargs.get("width", width)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        budget().size(len(str(value)) + lines * max(per_line, 0), "the indent filter")

    def tojson(value: Any, *args: Any, **kwargs: Any) -> None:
        b = budget()
        b.width(kwargs.get("indent", args[1] if len(args) > 1 else None), "tojson indent", b.limits.max_json_indent)

    def replace(value: Any, old: Any = "", new: Any = "", *args: Any, **kwargs: Any) -> None:
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            n = value.count(old) if old else len(value) + 1
            budget().size(len(value) + n * len(new), "the replace filter")

    def join(value: Any, d: Any = "", *args: Any, **kwargs: Any) -> None:
        if isinstance(value, (list, tuple)) and isinstance(d, str):
            budget().size(len(d) * len(value), "the join filter's separators")

    def percent(value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, str):
            check_percent_format(value)

    def slices(value: Any, slices: Any = 1, *args: Any, **kwargs: Any) -> None:
        budget().width(slices, "the slice filter's count", budget().limits.max_range)

    return {"center": center, "indent": indent, "tojson": tojson, "replace": replace, "join": join,
            "format": percent, "slice": slices}


_CHECKS = _filter_checks()


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with the deadline, the pre-check for `name` if any, and a weighed result."""
    check = _CHECKS.get(name)
    passes_context = getattr(func, "jinja_pass_arg", None) is not None

    @wraps(func)  # keeps jinja_pass_arg, so that jinja still passes the context or environment first
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = budget()
        b.tick()
        if check is not None:
            check(*(args[1:] if passes_context else args), **kwargs)
        return b.weigh(func(*args, **kwargs), f"the result of the {name} filter")

    return guarded


def _guarded_call(attribute: str, node: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(attribute), [node], [], None, None, lineno=node.lineno)


class _Guards(NodeTransformer):
    """Rewrite the parsed template so that loops, `~`, literals and printed values go through the
    environment's guard methods."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _guarded_call("guard_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _guarded_call("guard_concat", nodes.List(list(node.nodes), lineno=node.lineno))

    def visit_List(self, node: nodes.List) -> nodes.Node:
        self.generic_visit(node)
        return _guarded_call("guard_value", node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _guarded_call("guard_value", node)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        self.generic_visit(node)
        return _guarded_call("guard_value", node) if node.ctx == "load" else node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [n if isinstance(n, nodes.TemplateData) else _guarded_call("guard_value", n) for n in node.nodes]
        return node


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment plus the time and size bounds of the active RenderLimits."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = self.bounded_range
        self.globals.pop("lipsum", None)  # makes text of any length on request; no template needs it
        self.filters = {name: guard_filter(name, f) for name, f in self.filters.items()}

    def set_filter(self, name: str, func: Callable[..., Any]) -> None:
        self.filters[name] = guard_filter(name, func)

    def compile_guarded(self, source: str) -> jinja2.Template:
        tree = _Guards().visit(self.parse(source))
        tree.set_environment(self)
        return self.from_string(tree)

    # -- methods the rewritten template calls ------------------------------------------------------

    def bounded_range(self, *args: int) -> range:
        r = range(*args)
        b = budget()
        if len(r) > b.limits.max_range:
            raise BudgetExceeded(f"range of {len(r)} items is over the limit of {b.limits.max_range}")
        return r

    def guard_loop(self, iterable: Any) -> Iterator[Any]:
        b = budget()
        for i, item in enumerate(iterable):
            if not i & 63:
                b.tick()
            yield item

    def guard_concat(self, items: list[Any]) -> str:
        parts = [str(x) for x in items]
        budget().size(sum(map(len, parts)), "string concatenation")
        return "".join(parts)

    def guard_value(self, value: Any) -> Any:
        return budget().weigh(value, "a value")

    def concat(self, parts: Iterable[str]) -> str:
        # joins what {% set %}...{% endset %}, macros and filter blocks capture
        collected = list(parts)
        budget().size(sum(map(len, collected)), "captured output")
        return "".join(collected)

    # -- sandbox hooks -----------------------------------------------------------------------------

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        b = budget()
        b.tick()
        check_str_method(__obj, args, kwargs)
        return b.weigh(super().call(__context, __obj, *args, **kwargs), "the result of a call")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = budget()
        b.tick()
        check_binop(operator, left, right)
        return b.weigh(super().call_binop(context, operator, left, right), f"the result of {operator!r}")

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._underscore_item(obj, attribute) if attribute.startswith("_") else super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, str) and argument.startswith("_"):
            return self._underscore_item(obj, argument)
        return super().getitem(obj, argument)

    def _underscore_item(self, obj: Any, name: str) -> Any:
        # an underscore name may only be a key of a mapping; anything else is refused, even a name that does
        # not exist, since probing for one is never innocent
        try:
            return obj[name]
        except Exception:
            raise SecurityError(f"access to attribute {name!r} is not allowed") from None

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            check_str_format(fmt)
            return str(budget().weigh(wrapped(*args, **kwargs), "str.format"))

        return checked
