"""Azure OpenAI's strict structured-output subset of JSON Schema: check a schema, or reduce one.

With ``response_format: {"type": "json_schema", "json_schema": {..., "strict": true}}`` Azure OpenAI
accepts only a subset of JSON Schema and answers any other schema with HTTP 400. The rules here
are those of Microsoft Learn, "How to use structured outputs with Azure OpenAI in Microsoft
Foundry Models", section "JSON Schema support and limitations" (source
``articles/ai-foundry/openai/how-to/structured-outputs.md``, ``ms.date: 12/6/2025``; the older
``ai-services`` page dated 01/30/2025 has the same section under "Supported schemas and
limitations"):

* supported types: string, number, boolean, integer, object, array, enum, ``anyOf``; the root
  must be an object and may not be ``anyOf``;
* every property is listed in ``required`` (an optional field is a union with ``null``);
* ``additionalProperties: false`` on every object;
* at most 100 object properties in total and at most five levels of nesting;
* unsupported keywords: strings ``minLength``, ``maxLength``, ``pattern``, ``format``; numbers
  ``minimum``, ``maximum``, ``multipleOf``; objects ``patternProperties``,
  ``unevaluatedProperties``, ``propertyNames``, ``minProperties``, ``maxProperties``; arrays
  ``unevaluatedItems``, ``contains``, ``minContains``, ``maxContains``, ``minItems``, ``maxItems``,
  ``uniqueItems``;
* schemas nested in ``anyOf`` follow the same subset; definitions (``$defs`` with local
  ``$ref``) and recursion (``#`` or a definition referring to itself) are supported.

The page says Azure supports "the same subset of the JSON Schema as OpenAI". Three limits it does
not state are OpenAI's, in the set that went with the 100 / 5 limits the Azure page still
quotes (restated for Azure OpenAI in SnapLogic's "Structured Outputs with Azure OpenAI LLMs"
guide; the enum count also by the service's own 400 text, below): the property names,
definition names, enum values and ``const`` values together at most 15,000 characters; at most
500 enum values in the schema; an enum of more than 250 strings at most 7,500 characters.
OpenAI's current guide has raised all five limits for its own service; the lower numbers are
the ones both accept.

Beyond the page, the checker is an allowlist: a keyword the page does not document (``default``,
``allOf``, ``oneOf``, ``not``, ``if``, ``exclusiveMinimum``, ``examples``...) is reported as not
permitted. ``title`` and ``description`` are allowed (the page's own examples carry
``description``; the openai SDK's strict helper keeps pydantic's ``title``). A ``$ref`` may not
have sibling keywords.

Violations read as the service words them where its text is known. The body of Azure's 400 was
quoted from an Azure OpenAI gpt-4o deployment in dottxt-ai/outlines#844 (2024-10-24):
``invalid_request_error``, ``param: "response_format"``, ``code: null``, message ``Invalid schema
for response_format '<name>': In context=(), 'additionalProperties' is required to be supplied
and to be false.``. The texts for a keyword (``In context=('properties', 'x'), 'minLength' is
not permitted.``), for ``required`` (``... Missing 'x'.`` / ``Extra required key 'x'
supplied.``), for a ``$ref`` with siblings and for the enum count are OpenAI's, from API errors
quoted in public reports; Azure serves the same subset. For the root type, nesting, property
count, large enums and total string size no service text was found: those messages are this
module's own wording.

``to_strict_schema`` turns any schema (pydantic's ``model_json_schema()`` output) into one inside
the subset: unsupported keywords are removed (a removed bound is restated in the
``description`` so a model still sees it), every object is closed and every property required,
a property that was optional becomes nullable, ``oneOf`` becomes ``anyOf``, a one-element
``allOf`` and a ``$ref`` with siblings are inlined. Bounds are then the parser's job (pydantic
validates the answer); only the structure is the service's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.llm.strict_reduce import to_strict_schema
from shared.llm.strict_rules import (
    ALLOWED_KEYWORDS,
    DEFINITIONS,
    LARGE_ENUM_VALUES,
    MAX_ENUM_VALUES,
    MAX_LARGE_ENUM_CHARS,
    MAX_NESTING,
    MAX_PROPERTIES,
    MAX_STRING_CHARS,
    SUPPORTED_TYPES,
    UNSUPPORTED_BY_TYPE,
)

__all__ = [
    "LARGE_ENUM_VALUES",
    "MAX_ENUM_VALUES",
    "MAX_LARGE_ENUM_CHARS",
    "MAX_NESTING",
    "MAX_PROPERTIES",
    "MAX_STRING_CHARS",
    "SUPPORTED_TYPES",
    "UNSUPPORTED_BY_TYPE",
    "Violation",
    "describe",
    "is_strict_schema",
    "strict_schema_violations",
    "to_strict_schema",
]

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    """One way a schema breaks the subset: where (the service's ``context`` tuple), which rule."""

    context: Path
    keyword: str
    message: str

    def __str__(self) -> str:
        return self.message


def _in(context: Path) -> str:
    return f"In context={context!r}"


def strict_schema_violations(schema: object) -> list[Violation]:
    """Every way ``schema`` breaks Azure OpenAI's strict subset (empty: the service accepts it)."""
    if not isinstance(schema, Mapping):
        return [Violation((), "type", "In context=(), the schema must be a JSON object.")]
    checker = _Checker(schema)
    checker.run()
    return checker.violations


def is_strict_schema(schema: object) -> bool:
    return not strict_schema_violations(schema)


class _Checker:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.violations: list[Violation] = []
        self.properties = 0
        self.string_chars = 0
        self.enum_values = 0
        self._walked_defs: set[str] = set()
        self._counted: set[tuple[Path, str]] = set()

    def add(self, context: Path, keyword: str, message: str) -> None:
        violation = Violation(context, keyword, message)
        if violation not in self.violations:  # a definition is walked once per reference
            self.violations.append(violation)

    def first(self, context: Path, what: str) -> bool:
        """True the first time: a definition's sizes count once, not once per reference."""
        key = (context, what)
        if key in self._counted:
            return False
        self._counted.add(key)
        return True

    def run(self) -> None:
        root = self.root
        if root.get("type") != "object" or "anyOf" in root:
            self.add(
                (),
                "type",
                "In context=(), the root schema must be an object ('type': 'object'), "
                "not 'anyOf' or another type.",
            )
        for key in DEFINITIONS:
            defs = root.get(key)
            if defs is not None and not isinstance(defs, Mapping):
                self.add((), key, f"In context=(), '{key}' must be an object of schemas.")
            elif isinstance(defs, Mapping):
                self.string_chars += sum(len(str(name)) for name in defs)
        self.node(root, (), depth=0, refs=())
        # A definition nothing refers to is still part of the schema the service compiles.
        for key in DEFINITIONS:
            defs = root.get(key)
            if isinstance(defs, Mapping):
                for name, sub in defs.items():
                    pointer = f"#/{key}/{name}"
                    if pointer not in self._walked_defs:
                        self._walked_defs.add(pointer)
                        self.node(sub, (key, name), depth=0, refs=(pointer,))
        if self.properties > MAX_PROPERTIES:
            self.add(
                (),
                "properties",
                f"The schema has {self.properties} object properties in total; at most "
                f"{MAX_PROPERTIES} are allowed.",
            )
        if self.enum_values > MAX_ENUM_VALUES:
            self.add(
                (),
                "enum",
                f"Expected at most {MAX_ENUM_VALUES} enum values in total within a single schema "
                f"when using structured outputs, but received {self.enum_values}. Consider "
                "reducing the number of enums, or use 'strict: false' to opt out of structured "
                "outputs.",
            )
        if self.string_chars > MAX_STRING_CHARS:
            self.add(
                (),
                "enum",
                "The property names, definition names, enum values and const values of the "
                f"schema total {self.string_chars} characters; at most {MAX_STRING_CHARS} are "
                "allowed.",
            )

    def node(self, node: Any, context: Path, *, depth: int, refs: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            self.add(context, "type", f"{_in(context)}, a schema must be a JSON object.")
            return
        for key in node:
            if key in DEFINITIONS and context == ():
                continue
            if key not in ALLOWED_KEYWORDS:
                self.add(context, str(key), f"{_in(context)}, '{key}' is not permitted.")
        if "$ref" in node:
            self.ref(node, context, depth=depth, refs=refs)
            return
        types = self.types(node, context)
        if "enum" in node:
            self.enum(node["enum"], context)
        if isinstance(node.get("const"), str) and self.first(context, "const"):
            self.string_chars += len(node["const"])
        if "anyOf" in node:
            branches = node["anyOf"]
            if not isinstance(branches, list) or not branches:
                self.add(context, "anyOf", f"{_in(context)}, 'anyOf' must be a non-empty array.")
            else:
                for i, branch in enumerate(branches):
                    self.node(branch, (*context, "anyOf", i), depth=depth, refs=refs)
        if "object" in types or "properties" in node:
            self.object(node, context, depth=depth + 1, refs=refs)
        if "items" in node:
            self.node(node["items"], (*context, "items"), depth=depth, refs=refs)

    def types(self, node: Mapping[str, Any], context: Path) -> set[str]:
        declared = node.get("type")
        if declared is None:
            return set()
        listed = declared if isinstance(declared, list) else [declared]
        if not listed or any(t not in SUPPORTED_TYPES for t in listed):
            self.add(
                context,
                "type",
                f"{_in(context)}, 'type' must be one of {sorted(SUPPORTED_TYPES)} (or a list of "
                "them).",
            )
        return {str(t) for t in listed}

    def enum(self, values: Any, context: Path) -> None:
        if not isinstance(values, list) or not values:
            self.add(context, "enum", f"{_in(context)}, 'enum' must be a non-empty array.")
            return
        strings = [v for v in values if isinstance(v, str)]
        chars = sum(len(v) for v in strings)
        if self.first(context, "enum"):
            self.enum_values += len(values)
            self.string_chars += chars
        if len(strings) > LARGE_ENUM_VALUES and chars > MAX_LARGE_ENUM_CHARS:
            self.add(
                context,
                "enum",
                f"{_in(context)}, an enum of more than {LARGE_ENUM_VALUES} string values may "
                f"total at most {MAX_LARGE_ENUM_CHARS} characters; this one has {chars}.",
            )

    def ref(
        self, node: Mapping[str, Any], context: Path, *, depth: int, refs: tuple[str, ...]
    ) -> None:
        ref = node["$ref"]
        siblings = sorted(str(k) for k in node if k != "$ref")
        if siblings:
            self.add(
                context,
                "$ref",
                f"context={context!r}, $ref cannot have keywords {set(siblings)!r}.",
            )
        if not isinstance(ref, str) or not ref.startswith("#"):
            self.add(context, "$ref", f"{_in(context)}, only local '$ref' values are supported.")
            return
        target = _resolve(self.root, ref)
        if target is None:
            self.add(context, "$ref", f"{_in(context)}, '$ref' {ref!r} does not resolve.")
            return
        if ref == "#" or ref in refs:
            return  # recursion is supported, and the cycle holds nothing new to check
        self._walked_defs.add(ref)
        # Walked again per reference, for the nesting below this point; sizes count once.
        self.node(target, _pointer_context(ref), depth=depth, refs=(*refs, ref))

    def object(
        self, node: Mapping[str, Any], context: Path, *, depth: int, refs: tuple[str, ...]
    ) -> None:
        if depth > MAX_NESTING:
            self.add(
                context,
                "properties",
                f"{_in(context)}, objects are nested {depth} levels deep; at most {MAX_NESTING} "
                "levels are allowed.",
            )
        if node.get("additionalProperties") is not False:
            self.add(
                context,
                "additionalProperties",
                f"{_in(context)}, 'additionalProperties' is required to be supplied and to be "
                "false.",
            )
        properties = node.get("properties", {})
        if not isinstance(properties, Mapping):
            self.add(context, "properties", f"{_in(context)}, 'properties' must be an object.")
            return
        required = node.get("required", [])
        rule = (
            f"{_in(context)}, 'required' is required to be supplied and to be an array "
            "including every key in properties."
        )
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            self.add(context, "required", rule)
        else:
            missing = [name for name in properties if name not in required]
            if missing:
                self.add(context, "required", f"{rule} Missing {missing[0]!r}.")
            extra = [r for r in required if r not in properties]
            if extra:
                self.add(context, "required", f"{rule} Extra required key {extra[0]!r} supplied.")
        count = self.first(context, "properties")
        for name, sub in properties.items():
            if count:
                self.properties += 1
                self.string_chars += len(str(name))
            self.node(sub, (*context, "properties", name), depth=depth, refs=refs)


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    if ref == "#":
        return root
    node: Any = root
    for raw in ref[1:].lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return node


def _pointer_context(ref: str) -> Path:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in ref[1:].lstrip("/").split("/"))


def describe(violations: Sequence[Violation]) -> str:
    """One line for a log or an error: the first few violations."""
    shown = "; ".join(v.message for v in violations[:3])
    more = len(violations) - 3
    return shown + (f"; and {more} more" if more > 0 else "")
