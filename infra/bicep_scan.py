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

This module reads declarations (:class:`BicepFile`); the masking and bracket matching are
:mod:`infra.bicep_text`, the evaluator :mod:`infra.bicep_eval`. Their public names are
importable from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from infra.bicep_eval import Evaluator
from infra.bicep_text import (
    _IDENTIFIER,
    ScanError,
    Unresolved,
    _closing,
    _entries,
    _entry_spans,
    _mask,
    _value_end,
    array_items,
    closing_bracket,
    mask,
)


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
        return Evaluator(self, overrides or {}).evaluate(expression, ())


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


__all__ = [
    "BicepFile",
    "ModuleCall",
    "ScanError",
    "Unresolved",
    "array_items",
    "closing_bracket",
    "known_array_items",
    "mask",
    "try_evaluate",
]
