"""JSON Schema helpers for the simulator's structured outputs.

``resolve_ref`` follows the local ``$ref`` values pydantic emits while answers are generated;
``validate`` checks a generated answer (a failure is a simulator bug and is logged) and proves a
``schema`` fault really breaks the schema, with the ``jsonschema`` library (draft 2020-12, the
dialect pydantic v2 emits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

MAX_REF_HOPS = 64


class SchemaResolutionError(ValueError):
    """A ``$ref`` points nowhere, or refs loop without ever reaching a schema."""


def resolve_ref(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    """The schema a local ``$ref`` (``#``, ``#/$defs/Name``, any JSON pointer) points to."""
    if not ref.startswith("#"):
        raise SchemaResolutionError(f"only local $ref values are supported, got {ref!r}")
    node: Any = root
    pointer = ref[1:]
    if pointer:
        for raw in pointer.lstrip("/").split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaResolutionError(f"$ref {ref!r} does not resolve")
    if isinstance(node, bool):
        return {} if node else {"not": {}}
    if not isinstance(node, Mapping):
        raise SchemaResolutionError(f"$ref {ref!r} does not point to a schema")
    return node


def validate(instance: Any, schema: Mapping[str, Any] | bool) -> list[str]:
    """Every way ``instance`` breaks ``schema``, as ``path: problem`` strings (empty: valid)."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: e.json_path)
    ]


def break_schema(value: Any, schema: Mapping[str, Any]) -> Any:
    """Valid JSON that violates ``schema`` (for the ``schema`` fault): drop a required property,
    else put an invalid value in an enum field, else change the top-level type."""
    root = _flat(schema)
    if isinstance(value, dict):
        required = [r for r in root.get("required", ()) if r in value]
        if required:
            broken = dict(value)
            del broken[required[0]]
            return broken
        for prop, sub in root.get("properties", {}).items():
            if prop in value and "enum" in _flat(sub, schema):
                return {**value, prop: "__not_a_valid_value__"}
        if root.get("additionalProperties") is False:
            return {**value, "unexpected_property": True}
        return [value]
    if isinstance(value, list):
        return {"items": value}
    return {"value": value}


def _flat(schema: Any, root: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    base = root if root is not None else schema
    current = schema
    for _ in range(MAX_REF_HOPS):
        if not isinstance(current, Mapping) or "$ref" not in current:
            break
        try:
            current = resolve_ref(base, current["$ref"])
        except SchemaResolutionError:
            return {}
    return current if isinstance(current, Mapping) else {}
