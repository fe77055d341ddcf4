"""Reading Bicep without a Bicep compiler.

A scanner finds declarations (``param``, ``var``, ``module``, ``resource``, ``output``) and object
literals by position, after blanking comments and string contents so braces and keywords inside
them are not mistaken for structure. An evaluator computes the statically known subset of
expressions: literals, arrays, objects, ``loadJsonContent`` and property paths into it, references
to vars and defaulted params, string interpolation, integer arithmetic, comparisons, conditionals
logical ``&&``/``||``, and a few functions (``string``, ``empty``, ``toLower``, ``toUpper``).
Parameters can be given values other than their defaults (``overrides``), so a check can ask what
an expression is with a switch on and off. Anything else, module outputs above all, raises
``Unresolved``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


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


def _entry_spans(
    original: str, masked: str, start: int, end: int
) -> Iterator[tuple[str, int, int]]:
    """``(key, value start, value end)`` for each ``key: value`` of the object body
    ``[start, end)``."""
    index = start
    pattern = re.compile(rf"\s*(?:({_IDENTIFIER})|'([^']*)')\s*:\s*")
    while index < end:
        while index < end and masked[index] in " \t\r\n,":
            index += 1
        if index >= end:
            return
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
    while index < end:
        while index < end and masked[index] in " \t\r\n,":
            index += 1
        if index >= end:
            return
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


@dataclass(frozen=True)
class ModuleCall:
    """A ``module`` declaration: its file, the expressions of its ``params``, the condition of
    an ``= if (...)`` module, and the other entries of its body (``scope``, ``dependsOn``)."""

    symbol: str
    path: str
    params: dict[str, str]
    conditional: bool
    condition: str | None = None
    entries: dict[str, str] = field(default_factory=dict)


@dataclass
class BicepFile:
    """One Bicep file, scanned on demand."""

    path: Path
    text: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> BicepFile:
        return cls(path, path.read_text(encoding="utf-8"))

    @cached_property
    def masked(self) -> str:
        return _mask(self.text)

    def _declarations(self, keyword: str) -> dict[str, tuple[str, int]]:
        """``name -> (rest of the declaration head, start of the value)`` for ``keyword``."""
        found: dict[str, tuple[str, int]] = {}
        head = re.compile(rf"^[ \t]*{keyword}[ \t]+({_IDENTIFIER})\b([^=\n]*)(=[ \t]*)?", re.M)
        for match in head.finditer(self.masked):
            value_start = match.end() if match.group(3) else -1
            found[match.group(1)] = (self.text[match.start(2) : match.end(2)].strip(), value_start)
        return found

    def _value_at(self, start: int) -> str:
        return self.text[start : _value_end(self.masked, start)].strip()

    @cached_property
    def params(self) -> dict[str, str | None]:
        """Parameter name -> default expression (None when it has no default)."""
        return {
            name: self._value_at(start) if start >= 0 else None
            for name, (_, start) in self._declarations("param").items()
        }

    @cached_property
    def vars(self) -> dict[str, str]:
        return {
            name: self._value_at(start) for name, (_, start) in self._declarations("var").items()
        }

    @cached_property
    def outputs(self) -> dict[str, str]:
        return {
            name: self._value_at(start)
            for name, (_, start) in self._declarations("output").items()
            if start >= 0
        }

    @cached_property
    def resource_types(self) -> set[str]:
        """Resource types this file declares (``existing`` references and child types too),
        without API versions."""
        types: set[str] = set()
        for match in re.finditer(rf"\bresource[ \t]+{_IDENTIFIER}[ \t]+'([ ]*)'", self.masked):
            declared = self.text[match.start(1) : match.end(1)].split("@")[0]
            types.add(declared)
        return types

    @cached_property
    def modules(self) -> dict[str, ModuleCall]:
        calls: dict[str, ModuleCall] = {}
        head = re.compile(
            rf"^[ \t]*module[ \t]+({_IDENTIFIER})[ \t]+'([ ]*)'[ \t]*=[ \t]*(if[ \t]*\()?", re.M
        )
        for match in head.finditer(self.masked):
            path = self.text[match.start(2) : match.end(2)]
            condition: str | None = None
            if match.group(3):
                condition_close = _closing(self.masked, match.end() - 1)
                condition = self.text[match.end() : condition_close].strip()
                body_open = self.masked.index("{", condition_close)
            else:
                body_open = self.masked.index("{", match.end())
            body_close = _closing(self.masked, body_open)
            params: dict[str, str] = {}
            entries: dict[str, str] = {}
            for key, start, end in _entry_spans(self.text, self.masked, body_open + 1, body_close):
                if key == "params" and self.masked[start] == "{":
                    params_close = _closing(self.masked, start)
                    params = dict(_entries(self.text, self.masked, start + 1, params_close))
                else:
                    entries[key] = self.text[start:end].strip()
            calls[match.group(1)] = ModuleCall(
                match.group(1), path, params, bool(match.group(3)), condition, entries
            )
        return calls

    def module_calls_to(self, relative_path: str) -> list[ModuleCall]:
        return [call for call in self.modules.values() if call.path == relative_path]

    def object_var(self, name: str) -> dict[str, str]:
        """The ``key: value`` expressions of ``var <name> = { ... }``."""
        declaration = self._declarations("var").get(name)
        if declaration is None or declaration[1] < 0 or self.masked[declaration[1]] != "{":
            raise ScanError(f"{self.path.name}: no 'var {name} = {{ ... }}'")
        start = declaration[1]
        return dict(_entries(self.text, self.masked, start + 1, _closing(self.masked, start)))

    def property_values(self, name: str) -> list[str]:
        """Expressions assigned to ``name:`` anywhere in the file (resource bodies included)."""
        pattern = re.compile(rf"(?<![A-Za-z0-9_.]){re.escape(name)}[ \t]*:[ \t]*")
        return [self._value_at(match.end()) for match in pattern.finditer(self.masked)]

    def evaluate(self, expression: str, overrides: dict[str, Any] | None = None) -> Any:
        """The value of a literal-subset expression in this file's scope, with ``overrides``
        standing for the named params (a module's params as a caller passes them, or a switch
        set other than its default)."""
        return _Evaluator(self, overrides or {}).evaluate(expression, ())


class _Evaluator:
    _PATH = re.compile(rf"({_IDENTIFIER})((?:\.{_IDENTIFIER}|\['[^']*'\])*)")
    _STEP = re.compile(rf"\.({_IDENTIFIER})|\['([^']*)'\]")

    def __init__(self, source: BicepFile, overrides: dict[str, Any]) -> None:
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


def mask(text: str) -> str:
    """``text`` with comments and string contents blanked, positions kept."""
    return _mask(text)


def closing_bracket(masked: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index`` of a masked text."""
    return _closing(masked, open_index)


def try_evaluate(
    source: BicepFile, expression: str, overrides: dict[str, Any] | None = None
) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, None)`` when the expression is outside the subset."""
    try:
        return True, source.evaluate(expression, overrides)
    except Unresolved:
        return False, None


def known_array_items(source: BicepFile, expression: str) -> list[Any]:
    """The statically known items of an array literal; the rest are left out."""
    text = expression.strip()
    if not text.startswith("["):
        return []
    known: list[Any] = []
    for item in array_items(text):
        ok, value = try_evaluate(source, item)
        if ok:
            known.append(value)
    return known
