"""The statically known subset of Bicep expressions, evaluated in one file's scope.

Literals, arrays, objects, ``loadJsonContent`` and property paths into it, references to vars
and defaulted params (or ``overrides`` standing for params), string interpolation, integer
arithmetic, comparisons, conditionals, logical ``&&``/``||`` and a few functions. Anything else
raises :class:`~infra.bicep_text.Unresolved`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

from infra.bicep_text import (
    _CLOSE,
    _IDENTIFIER,
    _OPEN,
    Unresolved,
    _closing,
    _entries,
    _interpolation_end,
    _mask,
    _string_end,
    _top_level,
    array_items,
)


class Scope(Protocol):
    """The names an expression can refer to: a Bicep file's vars and params
    (:class:`infra.bicep_scan.BicepFile`), and its path for ``loadJsonContent``."""

    @property
    def path(self) -> Path: ...

    @property
    def vars(self) -> dict[str, str]: ...

    @property
    def params(self) -> dict[str, str | None]: ...


class Evaluator:
    """Evaluates expressions of ``source``; ``overrides`` stand for its params by name."""

    _PATH = re.compile(rf"({_IDENTIFIER})((?:\.{_IDENTIFIER}|\['[^']*'\])*)")
    _STEP = re.compile(rf"\.({_IDENTIFIER})|\['([^']*)'\]")

    def __init__(self, source: Scope, overrides: dict[str, Any]) -> None:
        self.source = source
        self.overrides = overrides

    def evaluate(self, expression: str, seen: tuple[str, ...]) -> Any:
        text = expression.strip()
        if not text:
            raise Unresolved("empty expression")
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if text.startswith("'''") and text.endswith("'''") and len(text) >= 6:
            return text[3:-3]
        if text.startswith("'") and _string_end(text, 0) == len(text):
            return self._string(text, seen)
        if text.startswith("[") and _closing(_mask(text), 0) == len(text) - 1:
            return [self.evaluate(item, seen) for item in array_items(text)]
        if text.startswith("{") and _closing(_mask(text), 0) == len(text) - 1:
            masked = _mask(text)
            return {
                key: self.evaluate(value, seen)
                for key, value in _entries(text, masked, 1, len(text) - 1)
            }
        masked = _mask(text)
        if "??" in masked or ".?" in masked:
            raise Unresolved(f"{text!r} uses a null-safe operator")
        question = _top_level(masked, "?")
        if question is not None:
            colon = _top_level(masked, ":", start=question + 1)
            if colon is None:
                raise Unresolved(f"{text!r} is an incomplete conditional")
            condition = self.evaluate(text[:question], seen)
            chosen = text[question + 1 : colon] if condition else text[colon + 1 :]
            return self.evaluate(chosen, seen)
        for operator in ("||", "&&"):
            index = _top_level(masked, operator)
            if index is not None:
                left = self.evaluate(text[:index], seen)
                right = self.evaluate(text[index + 2 :], seen)
                return bool(left or right) if operator == "||" else bool(left and right)
        comparison = self._comparison(text, masked, seen)
        if comparison is not None:
            return comparison
        arithmetic = self._arithmetic(text, seen)
        if arithmetic is not None:
            return arithmetic
        if text.startswith("!"):
            return not self.evaluate(text[1:], seen)
        return self._reference(text, masked, seen)

    def _reference(self, text: str, masked: str, seen: tuple[str, ...]) -> Any:
        """A known function's call, a path into ``loadJsonContent``, or a path from a var or
        defaulted param; anything else is outside the subset."""
        call = re.fullmatch(rf"({_IDENTIFIER})\((.*)\)", text, re.S)
        if (
            call
            and call.group(1) in _FUNCTIONS
            and _closing(masked, len(call.group(1))) == len(text) - 1
        ):
            return _FUNCTIONS[call.group(1)](self.evaluate(call.group(2), seen))
        load = re.fullmatch(r"loadJsonContent\('([^']+)'\)((?:\.\w+|\['[^']*'\])*)", text)
        if load:
            path = (self.source.path.parent / load.group(1)).resolve()
            return self._walk(json.loads(path.read_text(encoding="utf-8")), load.group(2), text)
        match = self._PATH.fullmatch(text)
        if match:
            return self._walk(self._symbol(match.group(1), seen), match.group(2), text)
        raise Unresolved(f"{text!r} is not a literal, a loadJsonContent or a path into one")

    def _string(self, text: str, seen: tuple[str, ...]) -> str:
        if _string_end(text, 0) != len(text):
            raise Unresolved(f"{text!r} is not a single string")
        parts: list[str] = []
        index = 1
        while index < len(text) - 1:
            char = text[index]
            if char == "\\":
                escaped = text[index + 1]
                parts.append({"n": "\n", "t": "\t", "r": "\r"}.get(escaped, escaped))
                index += 2
            elif text.startswith("${", index):
                end = _interpolation_end(text, index + 2)
                value = self.evaluate(text[index + 2 : end - 1], seen)
                parts.append(_bicep_string(value))
                index = end
            else:
                parts.append(char)
                index += 1
        return "".join(parts)

    def _comparison(self, text: str, masked: str, seen: tuple[str, ...]) -> bool | None:
        """``a == b``, ``a != b``, ``a < b`` and the like, or None when ``text`` is none."""
        for operator in ("==", "!=", ">=", "<=", ">", "<"):
            index = _top_level(masked, operator)
            if index is None:
                continue
            left = self.evaluate(text[:index], seen)
            right = self.evaluate(text[index + len(operator) :], seen)
            if operator == "==":
                return bool(left == right)
            if operator == "!=":
                return bool(left != right)
            if not (isinstance(left, int) and isinstance(right, int)):
                raise Unresolved(f"{text!r} compares non-integers")
            return {">=": left >= right, "<=": left <= right, ">": left > right, "<": left < right}[
                operator
            ]
        return None

    def _arithmetic(self, text: str, seen: tuple[str, ...]) -> int | None:
        """``a * b``, ``a + b``, ``a - b`` of integers, or None when ``text`` is no such thing."""
        masked = _mask(text)
        for operators in (("+", "-"), ("*", "/", "%")):
            depth = 0
            for index in range(len(masked) - 1, 0, -1):
                char = masked[index]
                if char in _CLOSE:
                    depth += 1
                elif char in _OPEN:
                    depth -= 1
                elif depth == 0 and char in operators and masked[index - 1] == " ":
                    left = self.evaluate(text[:index], seen)
                    right = self.evaluate(text[index + 1 :], seen)
                    if not (isinstance(left, int) and isinstance(right, int)):
                        raise Unresolved(f"{text!r} is not integer arithmetic")
                    if char == "+":
                        return left + right
                    if char == "-":
                        return left - right
                    if char == "*":
                        return left * right
                    if right == 0:
                        raise Unresolved(f"{text!r} divides by zero")
                    return left // right if char == "/" else left % right
        return None

    def _symbol(self, name: str, seen: tuple[str, ...]) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        if name in seen:
            raise Unresolved(f"{name} refers to itself")
        if name in self.source.vars:
            return self.evaluate(self.source.vars[name], (*seen, name))
        default = self.source.params.get(name)
        if default is not None:
            return self.evaluate(default, (*seen, name))
        raise Unresolved(f"{name} is not a var or a defaulted param of {self.source.path.name}")

    def _walk(self, value: Any, path: str, text: str) -> Any:
        for step in self._STEP.finditer(path):
            key = step.group(1) if step.group(1) is not None else step.group(2)
            if not isinstance(value, dict) or key not in value:
                raise Unresolved(f"{text!r}: no {key!r} there")
            value = value[key]
        return value


_FUNCTIONS: dict[str, Any] = {
    "string": lambda value: _bicep_string(value),
    "empty": lambda value: len(value) == 0,
    "toLower": lambda value: str(value).lower(),
    "toUpper": lambda value: str(value).upper(),
}


def _bicep_string(value: Any) -> str:
    """How Bicep interpolation renders a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    raise Unresolved(f"{value!r} cannot be interpolated into a string")
