"""The budget of one chat-template render: a deadline and size bounds, with the checks the sandbox uses.

Sizes are measured as "weight": characters of a string, plus items and the weight of the items of a
container (each reference counted, as str() would write it out). A value of weight W prints in at most
about 10 W characters, so bounding the weight of everything a template makes bounds its memory.
"""

from __future__ import annotations

import re
import string
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace


@dataclass(frozen=True)
class RenderLimits:
    """How much one render may take."""

    max_seconds: float = 2.0
    max_output_chars: int = 4 * 1024 * 1024  # also the bound on the weight of any value made while rendering
    max_range: int = 100_000
    max_format_width: int = 10_000  # widths and precisions in %-formats, str.format and padding
    max_json_indent: int = 64
    max_int_bits: int = 65_536
    max_template_chars: int = 1024 * 1024


class BudgetExceeded(SecurityError):
    """The template ran past a RenderLimits bound."""


class Budget:
    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.output = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"rendering took longer than {self.limits.max_seconds:g} s")

    def size(self, n: int, what: str) -> None:
        if n > self.limits.max_output_chars:
            raise BudgetExceeded(f"{what} would have size {n}, over the limit of {self.limits.max_output_chars}")

    def width(self, n: Any, what: str, limit: int | None = None) -> None:
        limit = self.limits.max_format_width if limit is None else limit
        if isinstance(n, str):
            n = len(n)
        if isinstance(n, int) and abs(n) > limit:
            raise BudgetExceeded(f"{what} of {n} is over the limit of {limit}")

    def weigh(self, value: Any, what: str) -> Any:
        """Return `value` after checking its weight; raise BudgetExceeded when it is too heavy."""
        if isinstance(value, (str, bytes)):
            self.size(len(value), what)
        elif isinstance(value, (list, tuple, dict, set, frozenset, Namespace)):
            self.size(weight(value, self.limits.max_output_chars), what)
        return value


def weight(value: Any, limit: int) -> int:
    """Weight of `value`, computed only until it passes `limit` (shared containers are weighed once)."""
    known: dict[int, int] = {}

    def visit(v: Any) -> int:
        if isinstance(v, (str, bytes)):
            return len(v)
        if isinstance(v, Namespace):
            # str() of a namespace writes out its attributes
            v = getattr(v, "_Namespace__attrs", {})
        if not isinstance(v, (list, tuple, dict, set, frozenset)):
            return 1
        if id(v) in known:
            return known[id(v)]
        known[id(v)] = limit + 1  # a container reaching itself again is too heavy to print anyway
        items = [x for kv in v.items() for x in kv] if isinstance(v, dict) else v
        total = len(items)
        for item in items:
            total += visit(item)
            if total > limit:
                break
        known[id(v)] = total
        return total

    return visit(value)


_BUDGET: ContextVar[Budget | None] = ContextVar("tfb_template_budget", default=None)


def budget() -> Budget:
    # outside a render (jinja folds constant expressions while compiling) the default bounds apply
    active = _BUDGET.get()
    return active if active is not None else Budget(RenderLimits())


def activate(limits: RenderLimits) -> tuple[Budget, Any]:
    state = Budget(limits)
    return state, _BUDGET.set(state)


def deactivate(token: Any) -> None:
    _BUDGET.reset(token)


# a %-format conversion: mapping key, flags, width, precision
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# a str.format spec: fill and align, sign, z, #, 0, width, grouping, precision
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d+)?[,_]?(?:\.(\d+))?")


def check_percent_format(fmt: str) -> None:
    for m in _PERCENT_SPEC.finditer(fmt.replace("%%", "")):
        for part in m.groups():
            if part == "*":
                raise BudgetExceeded("a %-format width taken from the arguments is not allowed")
            if part:
                budget().width(int(part), "a %-format width")


def check_str_format(fmt: str) -> None:
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise BudgetExceeded("a str.format width taken from the arguments is not allowed")
        m = _FORMAT_SPEC.match(spec)
        for part in m.groups() if m else ():
            if part:
                budget().width(int(part), "a str.format width")


def check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse `left op right` before it runs if the result would be too big."""
    b = budget()
    sequence = (str, bytes, list, tuple)
    cap = b.limits.max_output_chars
    if op == "*":
        if isinstance(left, int) and isinstance(right, sequence):
            left, right = right, left
        if isinstance(left, sequence) and isinstance(right, int) and not isinstance(right, bool):
            b.size(weight(left, cap) * max(right, 0), "repeating a sequence")
        elif (isinstance(left, int) and isinstance(right, int)
              and left.bit_length() + right.bit_length() > b.limits.max_int_bits):
            raise BudgetExceeded("an integer product is too large")
    elif op == "+" and isinstance(left, sequence) and isinstance(right, sequence):
        b.size(weight(left, cap) + weight(right, cap), "concatenation")
    elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if abs(left) > 1 and left.bit_length() * right > b.limits.max_int_bits:
            raise BudgetExceeded("a power is too large")
    elif op == "%" and isinstance(left, str):
        check_percent_format(left)


def check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse the str methods that would make a result much bigger than their inputs."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    b = budget()
    if name in ("center", "ljust", "rjust", "zfill") and args:
        b.width(args[0], f"str.{name} width")
    elif name == "expandtabs":
        b.width(args[0] if args else kwargs.get("tabsize", 8), "str.expandtabs tab size")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        b.size(len(owner) + count * len(args[1]), "str.replace")
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        b.size(weight(args[0], b.limits.max_output_chars) + len(owner) * len(args[0]), "str.join")
