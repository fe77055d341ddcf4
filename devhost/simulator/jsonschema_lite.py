"""A small JSON Schema validator for the subset structured outputs use.

The simulator checks its own answers with it (a generated value that fails is a simulator bug and
is logged), and proves that a ``schema`` fault really breaks the schema. It covers what pydantic
v2 emits and Azure's strict mode accepts: ``$ref``/``$defs``, ``allOf``/``anyOf``/``oneOf``,
``enum``, ``const``, ``type``, object, array (incl. ``prefixItems``), string and number keywords,
and the ``date-time``/``date``/``uuid``/``email`` formats. Unknown keywords are ignored, as the
specification says.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

_MAX_DEPTH = 64
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
    root = schema if isinstance(schema, Mapping) else {}
    errors: list[str] = []
    _check(instance, schema, root, "$", errors, 0)
    return errors


def is_valid(instance: Any, schema: Mapping[str, Any] | bool) -> bool:
    return not validate(instance, schema)


def _type_matches(instance: Any, type_name: str) -> bool:
    if type_name == "null":
        return instance is None
    if type_name == "boolean":
        return isinstance(instance, bool)
    if type_name == "integer":
        if isinstance(instance, bool):
            return False
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    if type_name == "number":
        return isinstance(instance, int | float) and not isinstance(instance, bool)
    if type_name == "string":
        return isinstance(instance, str)
    if type_name == "array":
        return isinstance(instance, list)
    if type_name == "object":
        return isinstance(instance, dict)
    return True


def _check(
    instance: Any,
    schema: Mapping[str, Any] | bool,
    root: Mapping[str, Any],
    path: str,
    errors: list[str],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        errors.append(f"{path}: schema nesting is too deep")
        return
    if schema is True:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    assert isinstance(schema, Mapping)
    if "$ref" in schema:
        _check(instance, resolve_ref(root, schema["$ref"]), root, path, errors, depth + 1)
    for sub in schema.get("allOf", ()):
        _check(instance, sub, root, path, errors, depth + 1)
    if "anyOf" in schema and not any(
        not _sub_errors(instance, sub, root, path, depth) for sub in schema["anyOf"]
    ):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        matching = sum(
            1 for sub in schema["oneOf"] if not _sub_errors(instance, sub, root, path, depth)
        )
        if matching != 1:
            errors.append(f"{path}: matches {matching} of oneOf, expected exactly 1")
    if "not" in schema and not _sub_errors(instance, schema["not"], root, path, depth):
        errors.append(f"{path}: matches a 'not' schema")
    if "const" in schema and not _json_equal(instance, schema["const"]):
        errors.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and not any(_json_equal(instance, v) for v in schema["enum"]):
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']!r}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_matches(instance, t) for t in types):
            errors.append(f"{path}: expected {'/'.join(types)}, got {_json_type(instance)}")
            return
    if isinstance(instance, dict):
        _check_object(instance, schema, root, path, errors, depth)
    elif isinstance(instance, list):
        _check_array(instance, schema, root, path, errors, depth)
    elif isinstance(instance, str):
        _check_string(instance, schema, path, errors)
    elif isinstance(instance, int | float) and not isinstance(instance, bool):
        _check_number(instance, schema, path, errors)


def _sub_errors(
    instance: Any, schema: Any, root: Mapping[str, Any], path: str, depth: int
) -> list[str]:
    found: list[str] = []
    _check(instance, schema, root, path, found, depth + 1)
    return found


def _check_object(
    instance: dict[str, Any],
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    errors: list[str],
    depth: int,
) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in instance:
            errors.append(f"{path}: missing required property {name!r}")
    additional = schema.get("additionalProperties", True)
    for name, value in instance.items():
        if name in properties:
            _check(value, properties[name], root, f"{path}.{name}", errors, depth + 1)
        elif additional is False:
            errors.append(f"{path}: unexpected property {name!r}")
        elif isinstance(additional, Mapping):
            _check(value, additional, root, f"{path}.{name}", errors, depth + 1)
    if len(instance) < schema.get("minProperties", 0):
        errors.append(f"{path}: fewer than {schema['minProperties']} properties")
    if "maxProperties" in schema and len(instance) > schema["maxProperties"]:
        errors.append(f"{path}: more than {schema['maxProperties']} properties")


def _check_array(
    instance: list[Any],
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    errors: list[str],
    depth: int,
) -> None:
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(instance):
        where = f"{path}[{index}]"
        if index < len(prefix):
            _check(item, prefix[index], root, where, errors, depth + 1)
        elif "items" in schema:
            _check(item, schema["items"], root, where, errors, depth + 1)
    if len(instance) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(instance) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    if schema.get("uniqueItems"):
        for i, item in enumerate(instance):
            if any(_json_equal(item, other) for other in instance[i + 1 :]):
                errors.append(f"{path}: items are not unique")
                break


def _check_string(instance: str, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if len(instance) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(instance) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']} characters")
    if "pattern" in schema and re.search(schema["pattern"], instance) is None:
        errors.append(f"{path}: does not match pattern {schema['pattern']!r}")
    fmt = schema.get("format")
    if fmt is not None and not _format_ok(instance, fmt):
        errors.append(f"{path}: is not a valid {fmt}")


def _check_number(instance: float, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: below the minimum {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        errors.append(f"{path}: above the maximum {schema['maximum']}")
    if "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
        errors.append(f"{path}: not above {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and instance >= schema["exclusiveMaximum"]:
        errors.append(f"{path}: not below {schema['exclusiveMaximum']}")
    step = schema.get("multipleOf")
    if step:
        quotient = instance / step
        if not math.isclose(quotient, round(quotient), rel_tol=1e-9, abs_tol=1e-9):
            errors.append(f"{path}: not a multiple of {step}")


def _format_ok(value: str, fmt: str) -> bool:
    try:
        if fmt == "date-time":
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return "T" in value.upper() and parsed is not None
        if fmt == "date":
            return bool(date.fromisoformat(value))
        if fmt == "uuid":
            return bool(uuid.UUID(value))
    except ValueError:
        return False
    if fmt == "email":
        return _EMAIL_RE.match(value) is not None
    return True


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_matches(value, name):
            return name
    return type(value).__name__


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``1 == 1.0`` but ``True != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return bool(a == b)
