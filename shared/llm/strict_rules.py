"""The strict subset's rules as data: its limits and the keywords it allows.

What ``shared.llm.strict_schema`` checks a schema against and ``shared.llm.strict_reduce``
reduces one to; the sources of each figure are cited in ``shared.llm.strict_schema``.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_PROPERTIES = 100
MAX_NESTING = 5
MAX_STRING_CHARS = 15_000
MAX_ENUM_VALUES = 500
LARGE_ENUM_VALUES = 250
MAX_LARGE_ENUM_CHARS = 7_500

SUPPORTED_TYPES = frozenset({"string", "number", "boolean", "integer", "object", "array", "null"})

UNSUPPORTED_BY_TYPE: Mapping[str, tuple[str, ...]] = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "multipleOf"),
    "object": (
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
    ),
    "array": (
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "minItems",
        "maxItems",
        "uniqueItems",
    ),
}
"""The documented table of unsupported type-specific keywords."""

ALLOWED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "title",
        "description",
    }
)
"""Keywords a schema node may carry (``$defs``/``definitions`` only at the root)."""

DEFINITIONS = ("$defs", "definitions")
"""Where a schema's root keeps its definitions (``$defs``; ``definitions`` is the older name)."""
