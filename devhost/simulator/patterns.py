"""Strings that match a JSON Schema ``pattern``, for fields whose natural value does not.

The pattern is parsed with the standard library's regular-expression parser and walked to emit
one matching string; every result is checked with ``re.search`` (JSON Schema patterns are not
anchored), and anything the walker cannot honour (look-arounds, exotic opcodes) yields None.
"""

from __future__ import annotations

import random
import re
import string

# The parser is private to ``re`` but stable across CPython 3.11+, and it is the only complete
# regular-expression parser available without a third-party dependency.
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_MAX_EXTRA_REPEATS = 3
_ALPHABET = string.ascii_lowercase + string.digits + string.ascii_uppercase + " -_."


class _Unsupported(Exception):
    """The walker met a construct it does not generate."""


def example_for(pattern: str, rng: random.Random, *, preferred: str | None = None) -> str | None:
    """``preferred`` if it matches ``pattern``, else a generated match, else None."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        return None
    if preferred is not None and compiled.search(preferred):
        return preferred
    try:
        parsed = sre_parse.parse(pattern)
        groups: dict[int, str] = {}
        candidate = _emit(parsed, rng, groups)
    except (_Unsupported, RecursionError, ValueError):
        return None
    return candidate if compiled.search(candidate) else None


def _emit(items: Any, rng: random.Random, groups: dict[int, str]) -> str:
    return "".join(_emit_one(op, av, rng, groups) for op, av in items)


def _emit_one(op: Any, av: Any, rng: random.Random, groups: dict[int, str]) -> str:
    if op is sre.LITERAL:
        return chr(av)
    if op is sre.NOT_LITERAL:
        return next(c for c in _ALPHABET if ord(c) != av)
    if op is sre.ANY:
        return "a"
    if op is sre.IN:
        return _emit_class(av, rng)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)):
        low, high, sub = av
        top = low + _MAX_EXTRA_REPEATS if high is sre.MAXREPEAT else min(high, low + 3)
        return "".join(_emit(sub, rng, groups) for _ in range(rng.randint(low, max(low, top))))
    if op is sre.SUBPATTERN:
        group, _add, _del, sub = av
        text = _emit(sub, rng, groups)
        if group is not None:
            groups[group] = text
        return text
    if op is getattr(sre, "ATOMIC_GROUP", None):
        return _emit(av, rng, groups)
    if op is sre.BRANCH:
        _, alternatives = av
        return _emit(rng.choice(alternatives), rng, groups)
    if op is sre.AT:
        return ""
    if op is sre.GROUPREF:
        return groups.get(av, "")
    raise _Unsupported(str(op))


def _emit_class(items: Any, rng: random.Random) -> str:
    if items and items[0][0] is sre.NEGATE:
        rest = items[1:]
        for candidate in _ALPHABET:
            if not any(_class_item_matches(op, av, candidate) for op, av in rest):
                return candidate
        raise _Unsupported("negated class excludes the whole alphabet")
    op, av = rng.choice(items)
    if op is sre.LITERAL:
        return chr(av)
    if op is sre.RANGE:
        low, high = av
        return chr(rng.randint(low, min(high, low + 25)))
    if op is sre.CATEGORY:
        return _category_char(av)
    raise _Unsupported(str(op))


def _class_item_matches(op: Any, av: Any, char: str) -> bool:
    if op is sre.LITERAL:
        return bool(ord(char) == av)
    if op is sre.RANGE:
        return bool(av[0] <= ord(char) <= av[1])
    if op is sre.CATEGORY:
        return re.fullmatch(_CATEGORY_PATTERNS.get(av, "(?!)"), char) is not None
    return True  # unknown items: assume they match, so the character is avoided


def _category_char(category: Any) -> str:
    for candidate in ("7", "a", " ", "-"):
        if re.fullmatch(_CATEGORY_PATTERNS.get(category, "(?!)"), candidate):
            return candidate
    raise _Unsupported(str(category))


_CATEGORY_PATTERNS: dict[Any, str] = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
