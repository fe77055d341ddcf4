"""Reduce any JSON Schema to Azure OpenAI's strict subset (``shared.llm.strict_schema``).

``to_strict_schema`` turns a schema (pydantic's ``model_json_schema()`` output) into one inside
the subset: unsupported keywords are removed (a removed bound is restated in the ``description``
so a model still sees it), every object is closed and every property required, a property that
was optional becomes nullable, ``oneOf`` becomes ``anyOf``, a one-element ``allOf`` and a
``$ref`` with siblings are inlined.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from shared.llm.strict_rules import ALLOWED_KEYWORDS, DEFINITIONS

_BOUND_WORDING = {
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
    "pattern": "matching the pattern {}",
    "format": "in {} format",
    "minimum": "at least {}",
    "maximum": "at most {}",
    "exclusiveMinimum": "greater than {}",
    "exclusiveMaximum": "less than {}",
    "multipleOf": "a multiple of {}",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
    "minProperties": "at least {} properties",
    "maxProperties": "at most {} properties",
}
"""How a removed bound is restated in the description."""

_REBUILT = ("properties", "required", "additionalProperties", "items", "anyOf")
"""Keywords the reducer rebuilds from their reduced parts rather than copying."""


def to_strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` reduced to the strict subset (a new dict; ``schema`` is left as it was)."""
    source = copy.deepcopy(dict(schema))
    defs: dict[str, Any] = {}
    for key in DEFINITIONS:
        found = source.pop(key, None)
        if isinstance(found, Mapping):
            for name, sub in found.items():
                defs[name] = sub
    reducer = _Reducer(defs)
    reduced: dict[str, Any] = reducer.reduce(source)
    if reducer.defs:
        reduced["$defs"] = {name: reducer.reduce(sub) for name, sub in reducer.defs.items()}
    return reduced


class _Reducer:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def target(self, ref: str) -> Any:
        for key in DEFINITIONS:
            prefix = f"#/{key}/"
            if ref.startswith(prefix):
                return self.defs.get(ref[len(prefix) :].replace("~1", "/").replace("~0", "~"))
        return None

    def reduce(self, node: Any) -> Any:
        """``node`` in the strict subset (``True`` and ``False`` as the schemas they stand for)."""
        if isinstance(node, bool):
            return {} if node else {"not": {}}
        if not isinstance(node, Mapping):
            return node
        node = dict(node)
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self.ref(node, _local_defs_ref(ref))
        all_of = node.pop("allOf", None)
        if isinstance(all_of, list) and len(all_of) == 1:
            return self.single_all_of(node, all_of[0])
        if all_of is not None:
            node["allOf"] = all_of  # several parts cannot be merged faithfully; left to fail
        one_of = node.pop("oneOf", None)
        if isinstance(one_of, list) and "anyOf" not in node:
            node["anyOf"] = one_of
        out: dict[str, Any] = {
            key: copy.deepcopy(value)
            for key, value in node.items()
            if key not in _REBUILT and (key in ALLOWED_KEYWORDS or key == "allOf")
        }
        notes = _bound_notes(node)
        if "anyOf" in node and isinstance(node["anyOf"], list):
            out["anyOf"] = [self.reduce(branch) for branch in node["anyOf"]]
        if "items" in node:
            out["items"] = self.reduce(node["items"])
        types = node.get("type")
        if (
            types == "object"
            or (isinstance(types, list) and "object" in types)
            or "properties" in node
        ):
            out.update(self.object(node))
        if notes:
            hint = "Must be " + ", ".join(notes) + "."
            existing = out.get("description")
            out["description"] = f"{existing} {hint}" if existing else hint
        return out

    def ref(self, node: dict[str, Any], ref: str) -> Any:
        """A ``$ref`` alone, or inlined with its ``title`` and ``description`` siblings."""
        siblings = {k: v for k, v in node.items() if k in ("title", "description")}
        if len(node) == 1 or not siblings:
            return {"$ref": ref}
        target = self.target(ref)
        if isinstance(target, Mapping):
            merged = {**dict(target), **siblings}
            return self.reduce(merged)
        return {"$ref": ref}

    def single_all_of(self, node: dict[str, Any], inner: Any) -> Any:
        """A one-element ``allOf`` merged into the node that holds it."""
        merged = dict(inner) if isinstance(inner, Mapping) else {}
        for key in ("title", "description"):
            if key in node:
                merged[key] = node[key]
        if "$ref" in merged and len(merged) > 1:
            return self.reduce(merged)
        return self.reduce({**node, **merged})

    def object(self, node: dict[str, Any]) -> dict[str, Any]:
        """An object closed, every property required, the optional ones nullable."""
        properties = node.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = set(node.get("required") or ())
        closed: dict[str, Any] = {}
        for name, sub in properties.items():
            reduced = self.reduce(sub)
            closed[name] = reduced if name in required else _nullable(reduced)
        extra = node.get("additionalProperties")
        return {
            "properties": closed,
            "required": list(closed),
            # A map (additionalProperties a schema) has no strict form: it is kept, so the
            # checker refuses it, rather than silently becoming an always-empty object.
            "additionalProperties": (
                self.reduce(extra) if isinstance(extra, Mapping) and extra else False
            ),
        }


def _bound_notes(node: Mapping[str, Any]) -> list[str]:
    """The node's bounds the subset drops, worded for its description."""
    notes = [
        wording.format(node[key])
        for key, wording in _BOUND_WORDING.items()
        if key in node and not isinstance(node[key], bool | dict | list)
    ]
    if node.get("uniqueItems") is True:
        notes.append("without duplicate items")
    return notes


def _local_defs_ref(ref: str) -> str:
    return "#/$defs/" + ref[len("#/definitions/") :] if ref.startswith("#/definitions/") else ref


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null: a property the source did not require, as the service wants it."""
    declared = schema.get("type")
    if "$ref" in schema or "enum" in schema or "const" in schema or declared is None:
        branches = schema.get("anyOf")
        if isinstance(branches, list) and set(schema) <= {"anyOf", "title", "description"}:
            if any(isinstance(b, Mapping) and b.get("type") == "null" for b in branches):
                return schema
            return {**schema, "anyOf": [*branches, {"type": "null"}]}
        return {"anyOf": [schema, {"type": "null"}]}
    if isinstance(declared, list):
        return schema if "null" in declared else {**schema, "type": [*declared, "null"]}
    if declared == "null":
        return schema
    return {**schema, "type": [declared, "null"]}
