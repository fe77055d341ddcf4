"""The text of a Bicep file as the scanner sees it: comments and string contents blanked
(positions kept), brackets matched, values and ``key: value`` entries found by position.

:mod:`infra.bicep_scan` reads declarations with these; :mod:`infra.bicep_eval` reads expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class ScanError(ValueError):
    """A file could not be read the way the checks need; the message names file and place."""


class Unresolved(ValueError):
    """A Bicep expression is outside the statically known subset the evaluator computes."""


def _mask(text: str) -> str:
    """``text`` with comments and string contents blanked (quotes and newlines kept), so braces
    and keywords can be found by position and read back from the original."""
    out = list(text)
    length = len(text)

    def blank(start: int, end: int) -> None:
        for index in range(start, end):
            if out[index] != "\n":
                out[index] = " "

    index = 0
    while index < length:
        if text.startswith("//", index):
            end = text.find("\n", index)
            end = length if end < 0 else end
            blank(index, end)
            index = end
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            end = length if end < 0 else end + 2
            blank(index, end)
            index = end
        elif text.startswith("'''", index):
            end = text.find("'''", index + 3)
            if end < 0:
                raise ScanError(f"unterminated ''' string at line {_line(text, index)}")
            blank(index + 3, end)
            index = end + 3
        elif text[index] == "'":
            end = _string_end(text, index)
            blank(index + 1, end - 1)
            index = end
        else:
            index += 1
    return "".join(out)


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _string_end(text: str, start: int) -> int:
    """Index just past the single-quoted string opening at ``start`` (escapes, ``${}``)."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
        elif char == "'":
            return index + 1
        elif text.startswith("${", index):
            index = _interpolation_end(text, index + 2)
        elif char == "\n":
            break
        else:
            index += 1
    raise ScanError(f"unterminated string at line {_line(text, start)}")


def _interpolation_end(text: str, index: int) -> int:
    depth = 1
    while index < len(text):
        char = text[index]
        if char == "'":
            index = _string_end(text, index)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise ScanError("unterminated ${...} interpolation")


_OPEN = {"{": "}", "[": "]", "(": ")"}
_CLOSE = set(_OPEN.values())


def _value_end(masked: str, start: int) -> int:
    """End of the expression starting at ``start``: the first newline (or ``,``) outside any
    bracket, where a following line starting with ``?`` or ``:`` continues a ternary."""
    depth = 0
    index = start
    while index < len(masked):
        char = masked[index]
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            if depth == 0:
                return index
            depth -= 1
        elif depth == 0 and char == ",":
            return index
        elif depth == 0 and char == "\n":
            following = masked[index + 1 :].lstrip(" \t")
            if not following.startswith(("?", ":")):
                return index
        index += 1
    return index


_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"


def _skip_separators(masked: str, index: int, end: int) -> int:
    """The first index at or after ``index`` (at most ``end``) that is not whitespace or the
    ``,`` between object entries or array items."""
    while index < end and masked[index] in " \t\r\n,":
        index += 1
    return index


def _entry_spans(
    original: str, masked: str, start: int, end: int
) -> Iterator[tuple[str, int, int]]:
    """``(key, value start, value end)`` for each ``key: value`` of the object body
    ``[start, end)``."""
    index = start
    pattern = re.compile(rf"\s*(?:({_IDENTIFIER})|'([^']*)')\s*:\s*")
    while (index := _skip_separators(masked, index, end)) < end:
        match = pattern.match(masked, index)
        if match is None:
            raise ScanError(f"cannot read an object entry at line {_line(original, index)}")
        key_start, key_end = match.span(1) if match.group(1) else match.span(2)
        value_start = match.end()
        value_end = _value_end(masked, value_start)
        yield original[key_start:key_end], value_start, value_end
        index = value_end


def _entries(original: str, masked: str, start: int, end: int) -> Iterator[tuple[str, str]]:
    """``(key, expression)`` for each ``key: value`` of the object body ``[start, end)``."""
    for key, value_start, value_end in _entry_spans(original, masked, start, end):
        yield key, original[value_start:value_end].strip()


def array_items(text: str) -> Iterator[str]:
    """The item expressions of the array literal ``text``."""
    masked = _mask(text)
    index = 1
    end = len(text) - 1
    while (index := _skip_separators(masked, index, end)) < end:
        stop = _value_end(masked, index)
        yield text[index:stop]
        index = stop


def _closing(masked: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index``."""
    depth = 0
    for index in range(open_index, len(masked)):
        char = masked[index]
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0:
                return index
    raise ScanError(f"unbalanced brackets from offset {open_index}")


def _top_level(masked: str, token: str, *, start: int = 0) -> int | None:
    """Index of the first ``token`` outside brackets at or after ``start``."""
    depth = 0
    index = start
    while index < len(masked):
        char = masked[index]
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif depth == 0 and masked.startswith(token, index):
            following = masked[index + len(token) : index + len(token) + 1]
            previous = masked[index - 1 : index]
            # '>' inside '>=', '=' of '==' or '!=', and '!' of a negation are not this token.
            if not (following == "=" and token in (">", "<")) and previous not in (
                "=",
                "!",
                "<",
                ">",
            ):
                return index
        index += 1
    return None


def mask(text: str) -> str:
    """``text`` with comments and string contents blanked, positions kept."""
    return _mask(text)


def closing_bracket(masked: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index`` of a masked text."""
    return _closing(masked, open_index)
