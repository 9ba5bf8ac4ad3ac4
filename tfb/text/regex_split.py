"""Split text into words the way llama.cpp's `unicode_regex_split` does.

llama.cpp runs its pre-tokenizer regexes with C++ std::regex, which knows no Unicode categories. It
therefore "collapses" the text: every character outside ASCII becomes one stand-in byte for its category
(letter, number, punctuation, mark, symbol, other) or a vertical tab for Unicode whitespace, and every
\\p{..} in the regex becomes a class of that stand-in plus the ASCII members of the category. A regex
without categories runs on the real text, again with Unicode whitespace turned into a vertical tab.
We do the same with Python's `re` in ASCII mode (whose \\s, \\d and \\w are C's), so that quirks of the
scheme (a lowercase "é" is not [a-z], say) come out as in llama.cpp. llama.cpp's hand-written splitters
for its three most used regexes follow the same categories, so one engine covers them too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from tfb.errors import TokenizerError

# llama.cpp's Unicode White_Space list (scripts/gen-unicode-data.py)
_UNICODE_SPACES = frozenset([0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
_VTAB = "\x0b"
# stand-in characters for categories of non-ASCII code points, and the ASCII members of each category
_STAND_IN = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
_OTHER = "\xd0"
_ASCII_MEMBERS = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": "",
    "S": r"\$\+<->\^`\|~",
}
# the \p{..} names llama.cpp understands, with the category each one collapses to
_CATEGORY_NAMES = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L",
                   "Lo": "L"}
_PROPERTY = re.compile(r"\\p\{(\w+)\}")


class _Collapse(dict[int, str]):
    """str.translate table built on demand: code point -> its stand-in character."""

    def __missing__(self, cpt: int) -> str:
        if cpt < 128:
            out = chr(cpt)
        elif cpt in _UNICODE_SPACES:
            out = _VTAB
        else:
            out = _STAND_IN.get(unicodedata.category(chr(cpt))[0], _OTHER)
        self[cpt] = out
        return out


class _SpacesOnly(dict[int, str]):
    """str.translate table that only turns non-ASCII Unicode whitespace into a vertical tab."""

    def __missing__(self, cpt: int) -> str:
        out = _VTAB if cpt in _UNICODE_SPACES else chr(cpt)
        self[cpt] = out
        return out


_COLLAPSE = _Collapse()
_SPACES_ONLY = _SpacesOnly()


def _translate(regex: str, collapse: bool) -> str:
    """Rewrite a llama.cpp regex for Python's `re`.

    With `collapse`, \\p{..} becomes what llama.cpp puts in its place: outside [...] a class of its own,
    inside a class the stand-in and the ASCII members. A bare $ becomes \\Z: std::regex's $ matches only at
    the very end, Python's also before a final newline.
    """
    out: list[str] = []
    inside = False
    i = 0
    while i < len(regex):
        ch = regex[i]
        m = _PROPERTY.match(regex, i) if collapse and ch == "\\" else None
        if m and m.group(1) in _CATEGORY_NAMES:
            cat = _CATEGORY_NAMES[m.group(1)]
            members = _STAND_IN[cat] + _ASCII_MEMBERS[cat]
            out.append(members if inside else f"[{members}]")
            i = m.end()
            continue
        if ch == "\\":
            out.append(regex[i:i + 2])
            i += 2
            continue
        if ch == "[":
            inside = True
        elif ch == "]" and inside:
            inside = False
        out.append("\\Z" if ch == "$" and not inside else ch)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    collapsed: bool  # runs on the collapsed text (it names categories) rather than the real one


def _compile(regex: str) -> _Rule:
    collapsed = _PROPERTY.search(regex) is not None
    if collapsed and any(ord(c) >= 128 for c in regex):
        raise TokenizerError(f"pre-tokenizer regex {regex!r} mixes Unicode categories with non-ASCII characters")
    try:
        return _Rule(re.compile(_translate(regex, collapsed), re.ASCII), collapsed)
    except re.error as e:
        raise TokenizerError(f"pre-tokenizer regex {regex!r} does not compile: {e}") from None


class RegexSplitter:
    """Applies a sequence of regexes; each splits every piece into its matches and the text between them."""

    def __init__(self, regexes: Sequence[str]) -> None:
        self.rules = [_compile(r) for r in regexes]

    def split(self, text: str) -> list[str]:
        if not text:
            return []
        collapsed = text.translate(_COLLAPSE) if any(r.collapsed for r in self.rules) else ""
        spaced = text.translate(_SPACES_ONLY) if not all(r.collapsed for r in self.rules) else ""
        spans = [(0, len(text))]
        for rule in self.rules:
            subject = collapsed if rule.collapsed else spaced
            spans = [piece for start, end in spans for piece in _split_span(rule.pattern, subject, start, end)]
        return [text[s:e] for s, e in spans]


def _split_span(pattern: re.Pattern[str], subject: str, start: int, end: int) -> list[tuple[int, int]]:
    # each span is matched on its own, as if it were the whole text (llama.cpp iterates over a sub-range)
    out: list[tuple[int, int]] = []
    last = 0
    for m in pattern.finditer(subject[start:end]):
        s, e = m.span()
        if s > last:
            out.append((start + last, start + s))
        if e > s:
            out.append((start + s, start + e))
        last = e
    if last < end - start:
        out.append((start + last, end))
    return out
