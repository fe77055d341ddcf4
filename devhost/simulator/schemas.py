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
