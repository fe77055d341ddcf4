"""Strings that match a JSON Schema ``pattern``, for fields whose natural value does not.

Patterns are parsed by a small parser of our own that knows the subset the project's schemas use:
literals and escapes, ``.``, character classes (ranges, negation, ``\\d \\w \\s`` and their
negations), groups (``(...)``, ``(?:...)``, ``(?P<name>...)``), alternation, the quantifiers
``? * + {n} {n,} {n,m}`` (lazy or not) and the anchors ``^ $ \\A \\Z``. Anything else raises
:class:`UnsupportedPattern` naming the pattern; :func:`example_for` then returns None and the
simulator keeps its natural value, as it does for any schema it cannot satisfy.

JSON Schema patterns are not anchored, so a natural value that ``re.search``-matches is kept;
generated strings match the whole pattern (``re.fullmatch``).
"""

from __future__ import annotations

import logging
import random
import re
import string
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger(__name__)

_MAX_EXTRA_REPEATS = 3
_ALPHABET = string.ascii_letters + string.digits + " -_.:@/"

# Shorthand classes: what they match, and the characters a generated string draws from.
_SHORTHANDS: dict[str, tuple[Callable[[str], bool], str]] = {
    "d": (lambda c: bool(re.fullmatch(r"\d", c)), string.digits),
    "D": (lambda c: not re.fullmatch(r"\d", c), string.ascii_letters + "-_ "),
    "w": (lambda c: bool(re.fullmatch(r"\w", c)), string.ascii_letters + string.digits + "_"),
    "W": (lambda c: not re.fullmatch(r"\w", c), " -.:@/"),
    "s": (lambda c: bool(re.fullmatch(r"\s", c)), " "),
    "S": (lambda c: not re.fullmatch(r"\s", c), string.ascii_letters + string.digits + "-_."),
}
_ESCAPED_CONTROLS = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_ZERO_WIDTH = {"^", "$", "A", "Z"}
# A brace repeat as ``re`` reads it: {n}, {n,}, {,m}, {n,m}, {,}; "{}" and "{x" are literals.
_BRACES = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


class UnsupportedPattern(ValueError):
    """A pattern uses syntax outside the subset the simulator generates (or is not a regex)."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"cannot generate a match for pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


def example_for(pattern: str, rng: random.Random, *, preferred: str | None = None) -> str | None:
    """``preferred`` if it matches ``pattern``, else a generated match, else None (logged)."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        log.debug("schema pattern %r is not a regular expression", pattern)
        return None
    if preferred is not None and compiled.search(preferred):
        return preferred
    try:
        return generate(pattern, rng)
    except UnsupportedPattern as error:
        log.debug("%s", error)
        return None


def generate(pattern: str, rng: random.Random) -> str:
    """One string that ``re.fullmatch``-es ``pattern``; :class:`UnsupportedPattern` otherwise."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise UnsupportedPattern(pattern, f"it is not a regular expression ({error})") from None
    text = _Parser(pattern).parse()(rng)
    if compiled.fullmatch(text) is None:  # e.g. "a^b": an anchor inside the string
        raise UnsupportedPattern(pattern, f"the generated {text!r} does not match it")
    return text


# -- what the parser builds: functions that emit one matching string ------------------------------

_Emit = Callable[[random.Random], str]


def _nothing(rng: random.Random) -> str:
    return ""  # an anchor: it matches a position, not a character


def _literal(text: str) -> _Emit:
    return lambda rng: text


def _sequence(items: list[_Emit]) -> _Emit:
    return lambda rng: "".join(item(rng) for item in items)


def _choice(alternatives: list[_Emit]) -> _Emit:
    return lambda rng: rng.choice(alternatives)(rng)


def _repeat(item: _Emit, low: int, high: int | None) -> _Emit:
    top = low + _MAX_EXTRA_REPEATS if high is None else min(high, low + _MAX_EXTRA_REPEATS)
    return lambda rng: "".join(item(rng) for _ in range(rng.randint(low, top)))


def _char_class(ranges: list[tuple[str, str]], shorthands: list[str], negated: bool) -> _Emit:
    """A character from the ranges and shorthands, or (negated) one from none of them."""
    if negated:
        allowed = [
            c
            for c in _ALPHABET
            if not any(low <= c <= high for low, high in ranges)
            and not any(_SHORTHANDS[s][0](c) for s in shorthands)
        ]
        if not allowed:
            raise ValueError("the negated class excludes every character we generate")
        return lambda rng: rng.choice(allowed)
    pool = [(ord(low), min(ord(high), ord(low) + 25)) for low, high in ranges]
    samples = [_SHORTHANDS[s][1] for s in shorthands]
    return lambda rng: _pick(rng, pool, samples)


def _pick(rng: random.Random, pool: list[tuple[int, int]], samples: list[str]) -> str:
    index = rng.randrange(len(pool) + len(samples))
    if index < len(pool):
        return chr(rng.randint(*pool[index]))
    return rng.choice(samples[index - len(pool)])


# -- the parser -----------------------------------------------------------------------------------


class _Parser:
    """Recursive descent: choice := sequence ('|' sequence)*; sequence := (atom quantifier?)*."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pos = 0

    def parse(self) -> _Emit:
        node = self._choice()
        if self.pos < len(self.pattern):
            self._fail(f"unbalanced {self.pattern[self.pos]!r} at {self.pos}")
        return node

    def _fail(self, reason: str) -> NoReturn:
        raise UnsupportedPattern(self.pattern, reason)

    def _peek(self) -> str:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else ""

    def _take(self) -> str:
        char = self._peek()
        if not char:
            self._fail("it ends too early")
        self.pos += 1
        return char

    def _choice(self) -> _Emit:
        alternatives = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            alternatives.append(self._sequence())
        return alternatives[0] if len(alternatives) == 1 else _choice(alternatives)

    def _sequence(self) -> _Emit:
        items: list[_Emit] = []
        while self._peek() not in ("", "|", ")"):
            items.append(self._quantified(self._atom()))
        return _sequence(items)

    def _atom(self) -> _Emit:
        char = self._take()
        if char in "^$":
            return _nothing
        if char == ".":
            return _char_class([], ["w"], negated=False)
        if char == "[":
            return self._class()
        if char == "(":
            return self._group()
        if char == "\\":
            return self._escape()
        if char in "*+?" or (char == "{" and self._braces_at(self.pos - 1)):
            self._fail(f"nothing to repeat at {self.pos - 1}")
        return _literal(char)

    def _group(self) -> _Emit:
        if self.pattern.startswith("?:", self.pos):
            self.pos += 2
        elif self.pattern.startswith("?P<", self.pos):
            end = self.pattern.find(">", self.pos)
            if end < 0 or not self.pattern[self.pos + 3 : end].isidentifier():
                self._fail(f"a malformed group name at {self.pos}")
            self.pos = end + 1
        elif self._peek() == "?":
            self._fail(f"the group '(?{self.pattern[self.pos + 1 : self.pos + 2]}' at {self.pos}")
        node = self._choice()
        if self._take() != ")":
            self._fail("an unclosed group")
        return node

    def _escape(self) -> _Emit:
        char = self._take()
        if char in _SHORTHANDS:
            return _char_class([], [char], negated=False)
        if char in _ZERO_WIDTH:
            return _nothing
        return _literal(self._escaped_literal(char))

    def _escaped_literal(self, char: str) -> str:
        if char in _ESCAPED_CONTROLS:
            return _ESCAPED_CONTROLS[char]
        if char.isalnum():
            self._fail(f"the escape '\\{char}'")
        return char

    def _class(self) -> _Emit:
        negated = self._peek() == "^"
        self.pos += negated
        ranges: list[tuple[str, str]] = []
        shorthands: list[str] = []
        first = True
        while first or self._peek() != "]":
            first = False
            char = self._take()
            if char == "\\" and self._peek() in _SHORTHANDS:
                shorthands.append(self._take())
                continue
            low = self._escaped_literal(self._take()) if char == "\\" else char
            if char == "[":
                self._fail("a nested '[' in a class")
            high = low
            if self._peek() == "-" and self.pattern[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                end = self._take()
                high = self._escaped_literal(self._take()) if end == "\\" else end
                if high < low:
                    self._fail(f"the reversed range {low}-{high}")
            ranges.append((low, high))
        self.pos += 1
        try:
            return _char_class(ranges, shorthands, negated)
        except ValueError as error:
            self._fail(str(error))

    def _quantified(self, atom: _Emit) -> _Emit:
        char = self._peek()
        bounds: tuple[int, int | None]
        if char == "?":
            bounds = (0, 1)
        elif char == "*":
            bounds = (0, None)
        elif char == "+":
            bounds = (1, None)
        elif char == "{" and (braces := self._braces_at(self.pos)) is not None:
            bounds = braces
        else:
            return atom
        self.pos += 1 if char != "{" else 0
        if self._peek() == "?":  # lazy: same language
            self.pos += 1
        elif self._peek() in ("*", "+") or _BRACES.match(self.pattern, self.pos):
            self._fail(f"a repeated repeat at {self.pos}")
        if atom is _nothing:
            self._fail("a repeated anchor")
        return _repeat(atom, *bounds)

    def _braces_at(self, pos: int) -> tuple[int, int | None] | None:
        """The bounds of a brace repeat at ``pos`` (and move past it), or None for a literal."""
        found = _BRACES.match(self.pattern, pos)
        if found is None or found.group(0) == "{}":
            return None
        self.pos = found.end()
        low_text, comma, high_text = found.groups()
        low = int(low_text or 0)
        high = int(high_text) if high_text else (None if comma else low)
        if high is not None and high < low:
            self._fail(f"the bounds {found.group(0)}")
        return low, high
