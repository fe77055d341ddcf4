"""Schema-driven answers: JSON that is valid against a response schema and plausible for the text.

The generator walks a JSON Schema (pydantic v2 ``model_json_schema()`` output and hand-written
strict-mode schemas alike) and chooses every value from what the request says:

* enum strings are scored against the customer's words through their own tokens and the synonym
  table (``vocabulary.SYNONYMS``); priority-like scales follow the text's severity, language
  codes follow the detected language, and a critic's ``approve/revise/escalate`` follows the
  rules in the package docstring. With no evidence: a fallback value (``other``...) or a seeded
  choice.
* booleans named like ``needs_human`` / ``requires_*`` / ``escalate`` follow the escalation
  signals; numbers named like ``confidence`` rise with the evidence; entity arrays (``order_ids``,
  ``amounts``, ``products``) are extracted from the text; strings are written by field name.

Inside an object, enums and booleans are decided before numbers, arrays and strings, so that a
``reason`` can explain the ``verdict`` beside it and ``problems`` is empty when it approves.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from devhost.simulator import writer
from devhost.simulator.analysis import (
    TextAnalysis,
    amount_value,
    best_label,
)
from devhost.simulator.enums import LANGUAGE_WORDS, SCALE_WORDS, choose_enum
from devhost.simulator.patterns import example_for
from devhost.simulator.schemas import MAX_REF_HOPS, SchemaResolutionError, resolve_ref
from devhost.simulator.values import bounds, fit_length, fit_number, formatted, scale_unit

log = logging.getLogger(__name__)

_MAX_DEPTH = 24
_SHALLOW_DEPTH = 5  # below this, optional properties are left out and arrays kept minimal

_TEXT_FIELDS = ("reply", "text", "answer", "response", "body", "message", "draft", "content")
_SUMMARY_FIELDS = ("summary", "synopsis", "abstract", "gist")
_REASON_FIELDS = ("reason", "rationale", "explanation", "justification", "reasoning", "why")
_PROBLEM_FIELDS = ("problem", "issue", "violation", "concern", "finding", "error", "change")
_DETAIL_FIELDS = ("detail", "description", "explanation", "message", "fix", "suggestion", "note")
_HUMAN_FLAGS = ("needs_human", "human", "requires_", "require_", "escalat", "handoff", "hand_off")
_TYPE_ORDER = {"enum": 0, "boolean": 1, "integer": 2, "number": 2, "array": 3, "object": 4}


class SchemaGenerationError(ValueError):
    """The schema cannot be satisfied or understood (bad ``$ref``, endless recursion)."""


class SchemaGenerator:
    """One answer for one schema; construct per request (it holds the request's RNG)."""

    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        analysis: TextAnalysis,
        rng: random.Random,
        seed: int,
        level: int = 0,
    ) -> None:
        self._root = schema
        self._a = analysis
        self._rng = rng
        self._seed = seed
        self._level = level

    def generate(self) -> Any:
        """A value valid against the schema, chosen from the request's text."""
        return self._value(self._root, "", 0, {})

    # -- dispatch ---------------------------------------------------------------------------

    def _resolve(self, schema: Any) -> dict[str, Any]:
        """Follow ``$ref`` and fold ``allOf`` into one flat schema."""
        if isinstance(schema, bool):
            return {} if schema else {"not": {}}
        if not isinstance(schema, Mapping):
            raise SchemaGenerationError(f"a schema must be an object, got {type(schema).__name__}")
        merged: dict[str, Any] = {}
        current: Mapping[str, Any] = schema
        for _ in range(MAX_REF_HOPS):
            for key, value in current.items():
                if key not in ("$ref", "allOf"):
                    merged.setdefault(key, value)
            for part in current.get("allOf", ()):
                for key, value in self._resolve(part).items():
                    if key == "properties" and "properties" in merged:
                        merged["properties"] = {**value, **merged["properties"]}
                    elif key == "required" and "required" in merged:
                        merged["required"] = list(dict.fromkeys([*merged["required"], *value]))
                    else:
                        merged.setdefault(key, value)
            ref = current.get("$ref")
            if ref is None:
                return merged
            try:
                current = resolve_ref(self._root, ref)
            except SchemaResolutionError as exc:
                raise SchemaGenerationError(str(exc)) from None
        raise SchemaGenerationError("$ref chain does not end")

    def _value(self, schema: Any, name: str, depth: int, decided: Mapping[str, Any]) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaGenerationError("the schema recurses without an optional base case")
        s = self._resolve(schema)
        if "const" in s:
            return copy.deepcopy(s["const"])
        if "enum" in s:
            if not s["enum"]:
                raise SchemaGenerationError(f"enum of {name or 'the root'} is empty")
            return choose_enum(s, name, self._a, self._rng, self._seed)
        for union in ("anyOf", "oneOf"):
            if union in s:
                return self._union(s, s[union], name, depth, decided)
        kind = self._type_of(s, name)
        if kind == "null":
            return None
        if kind == "boolean":
            return self._boolean(s, name, decided)
        if kind in ("integer", "number"):
            return self._number(s, name, integer=kind == "integer")
        if kind == "array":
            return self._array(s, name, depth, decided)
        if kind == "object":
            return self._object(s, depth, decided)
        return self._string(s, name, decided)

    def _type_of(self, s: Mapping[str, Any], name: str) -> str:
        declared = s.get("type")
        if isinstance(declared, str):
            return declared
        if isinstance(declared, list) and declared:
            non_null = [t for t in declared if t != "null"]
            if not non_null or ("null" in declared and self._prefers_null(name)):
                return "null"
            return str(non_null[0])
        if "properties" in s or "additionalProperties" in s:
            return "object"
        if "items" in s or "prefixItems" in s:
            return "array"
        if any(k in s for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            return "number"
        return "string"

    def _union(
        self,
        parent: Mapping[str, Any],
        branches: Sequence[Any],
        name: str,
        depth: int,
        decided: Mapping[str, Any],
    ) -> Any:
        resolved = [self._resolve(b) for b in branches]
        nullable = any(r.get("type") == "null" for r in resolved)
        others = [b for b, r in zip(branches, resolved, strict=True) if r.get("type") != "null"]
        if not others or (nullable and (self._prefers_null(name) or depth > _SHALLOW_DEPTH)):
            return None
        # Siblings of anyOf (title, description, default) do not constrain the value.
        return self._value(others[0], name, depth + 1, decided)

    def _prefers_null(self, name: str) -> bool:
        """Optional entity fields are null when the text has no such entity."""
        key = name.lower()
        if "order" in key:
            return not self._a.order_ids
        if any(k in key for k in ("amount", "price", "total", "cost")):
            return not self._a.amounts
        if "product" in key:
            return not self._a.products
        return False

    # -- scalars ----------------------------------------------------------------------------

    def _boolean(self, s: Mapping[str, Any], name: str, decided: Mapping[str, Any]) -> bool:
        key = name.lower()
        a = self._a
        if "urgent" in key:
            return a.severity >= 3
        if any(flag in key for flag in _HUMAN_FLAGS):
            return a.needs_human
        if "pii" in key or "personal" in key or "sensitive" in key:
            return a.has_pii
        if "final" in key:
            return a.final_revision
        if "fraud" in key:
            return a.fraud
        if "legal" in key:
            return a.legal
        if "angry" in key or "upset" in key or "frustrat" in key:
            return a.angry
        if "repeat" in key:
            return a.repeated
        if any(k in key for k in ("approve", "accept", "pass", "valid", "ok")):
            verdict = _decided_text(decided, "verdict")
            return verdict == "approve" if verdict is not None else not a.escalation_signal
        default = s.get("default")
        return default if isinstance(default, bool) else False

    def _number(self, s: Mapping[str, Any], name: str, *, integer: bool) -> int | float:
        key = name.lower()
        low, high = bounds(s, integer=integer)
        natural: float
        if any(k in key for k in ("confidence", "probability", "certainty", "likelihood", "score")):
            jitter = self._rng.uniform(-0.03, 0.03)
            unit = min(0.97, 0.6 + 0.35 * self._a.evidence_strength + jitter)
            natural = scale_unit(unit, low, high)
        elif "sentiment" in key:
            unit = 0.2 if self._a.angry else (0.75 if self._a.intent.value == "feedback" else 0.5)
            natural = scale_unit(unit, -1.0 if low is None else low, 1.0 if high is None else high)
        elif any(k in key for k in SCALE_WORDS):
            sev = self._a.severity
            natural = sev + 1 if low is None or high is None else low + sev / 3 * (high - low)
        elif any(k in key for k in ("amount", "price", "total", "cost", "refund")):
            values = [amount_value(x) for x in self._a.amounts]
            natural = next((v for v in values if v is not None), 0.0)
        elif any(k in key for k in ("count", "quantity", "number_of", "num_")):
            natural = 1
        elif "revision" in key or "attempt" in key:
            natural = 0
        elif any(k in key for k in ("days", "hours", "minutes", "eta")):
            natural = 3
        elif isinstance(s.get("default"), int | float) and not isinstance(s.get("default"), bool):
            natural = float(s["default"])
        elif low is not None and high is not None:
            natural = low + (high - low) / 2
        else:
            natural = low if low is not None else (high if high is not None and high < 1 else 1)
        return fit_number(natural, s, low, high, integer=integer)

    # -- strings ----------------------------------------------------------------------------

    def _string(self, s: Mapping[str, Any], name: str, decided: Mapping[str, Any]) -> str:
        fmt = s.get("format")
        text = formatted(fmt, self._rng) if isinstance(fmt, str) else None
        if text is None:
            text = self._named_text(name, decided)
        pattern = s.get("pattern")
        if isinstance(pattern, str):
            matched = example_for(pattern, self._rng, preferred=text)
            if matched is None:
                log.debug("no example found for a pattern; the answer may not match it")
            else:
                text = matched
        return fit_length(text, s.get("minLength", 0), s.get("maxLength"))

    def _named_text(self, name: str, decided: Mapping[str, Any]) -> str:
        key = name.lower()
        a, level = self._a, self._level
        intent = _decided_text(decided, "intent")
        problem_kind = next(
            (v for k, v in decided.items() if isinstance(v, str) and v in writer.PROBLEM_KINDS),
            None,
        )
        if problem_kind is not None and any(k in key for k in _DETAIL_FIELDS):
            return writer.problem_detail(problem_kind, level=level)
        if any(k in key for k in _SUMMARY_FIELDS):
            return writer.summary(a, level=level, intent=intent)
        if any(k in key for k in _REASON_FIELDS):
            return writer.reason(a, decided, level=level)
        if any(k in key for k in LANGUAGE_WORDS):
            return a.language
        if key in _TEXT_FIELDS or any(key.endswith("_" + k) for k in _TEXT_FIELDS):
            return writer.reply(a, self._rng, level=level, intent=intent)
        if "order" in key:
            return a.order_ids[0] if a.order_ids else "unknown"
        if key == "id" or key.endswith("_id"):
            return f"sim-{self._rng.getrandbits(48):012x}"
        if "currency" in key:
            return _currency(a.amounts)
        if "product" in key or key in ("item", "item_name"):
            return a.products[0] if a.products else "item"
        if any(k in key for k in ("amount", "price", "total")):
            return a.amounts[0] if a.amounts else "0.00"
        if "email" in key:
            return "customer@example.com"
        if "city" in key:
            return "Springfield"
        if "country" in key:
            return "US"
        if any(k in key for k in ("team", "queue", "department", "assignee", "route")):
            return best_label(_TEAMS, a.grams).value
        return writer.short_text(name, a, self._rng, decided, level)

    # -- containers -------------------------------------------------------------------------

    def _array(
        self, s: Mapping[str, Any], name: str, depth: int, decided: Mapping[str, Any]
    ) -> list[Any]:
        low = int(s.get("minItems", 0))
        high = s.get("maxItems")
        prefix = list(s.get("prefixItems", ()))
        items = s.get("items", {} if not prefix else False)
        item_name = _singular(name)
        values: list[Any] = [
            self._value(p, f"{item_name}{i}", depth + 1, decided) for i, p in enumerate(prefix)
        ]
        if items is False:
            return values
        item_schema = self._resolve(items)
        wanted = self._array_length(name, item_schema, decided, depth)
        extracted = self._extract(name, item_schema)
        if extracted is not None:
            values.extend(extracted)
            wanted = len(values)
        count = max(low, wanted if high is None else min(wanted, int(high)))
        values = values[:count] if high is not None else values
        unique = bool(s.get("uniqueItems"))
        attempts = 0
        while len(values) < count and attempts < count * 4 + 8:
            attempts += 1
            value = self._value(items, item_name, depth + 1, decided)
            if unique and value in values:
                value = _variant(value, attempts)
                if value in values:
                    continue
            values.append(value)
        return values

    def _array_length(
        self, name: str, item_schema: Mapping[str, Any], decided: Mapping[str, Any], depth: int
    ) -> int:
        key = name.lower()
        if depth > _SHALLOW_DEPTH or self._level >= 2:
            return 0
        if any(k in key for k in _PROBLEM_FIELDS):
            verdict = _decided_text(decided, "verdict")
            if verdict is not None:
                return 1 if verdict == "revise" else 0
            return 1 if self._a.has_pii else 0
        return 1

    def _extract(self, name: str, item_schema: Mapping[str, Any]) -> list[Any] | None:
        """Entities found in the text, for arrays named after them; None for other arrays."""
        key = name.lower()
        item_type = item_schema.get("type")
        if "enum" in item_schema:
            values = [v for v in item_schema["enum"] if isinstance(v, str)]
            if len(values) != len(item_schema["enum"]) or not values:
                return None
            scored = sorted((self._a.score(v) for v in values), key=lambda s: s.score, reverse=True)
            chosen = [s.value for s in scored if s.score > 0][:2]
            return chosen or [best_label(values, self._a.grams).value]
        if item_type not in ("string", "number", "integer"):
            return None
        if "order" in key:
            return list(self._a.order_ids)
        if any(k in key for k in ("amount", "price", "total")):
            if item_type == "string":
                return list(self._a.amounts)
            numbers = [amount_value(x) for x in self._a.amounts]
            return [
                int(n) if item_type == "integer" else n
                for n in numbers
                if n is not None and (item_type != "integer" or n.is_integer())
            ]
        if item_type != "string":
            return None
        if "product" in key or key == "items":
            return list(self._a.products)
        if any(k in key for k in ("tag", "keyword", "topic", "label", "categor")):
            return list(self._a.intent.matched[:3]) or [self._a.intent.value]
        if "signal" in key or "flag" in key:
            return writer.signal_phrases(self._a)
        return None

    def _object(
        self, s: Mapping[str, Any], depth: int, decided: Mapping[str, Any]
    ) -> dict[str, Any]:
        properties: Mapping[str, Any] = s.get("properties", {})
        required = set(s.get("required", ()))
        names = [n for n in properties if n in required or depth <= _SHALLOW_DEPTH]
        order = sorted(names, key=lambda n: (self._rank(properties[n]), names.index(n)))
        own: dict[str, Any] = {}
        for prop in order:
            own[prop] = self._value(properties[prop], prop, depth + 1, {**decided, **own})
        result = {n: own[n] for n in properties if n in own}
        additional = s.get("additionalProperties")
        minimum = int(s.get("minProperties", 0))
        index = 0
        while len(result) < minimum and additional is not False:
            index += 1
            extra = additional if isinstance(additional, Mapping) else {"type": "string"}
            result[f"field_{index}"] = self._value(extra, f"field_{index}", depth + 1, own)
        return result

    def _rank(self, schema: Any) -> int:
        try:
            s = self._resolve(schema)
        except SchemaGenerationError:
            return 9
        if "enum" in s or "const" in s:
            return 0
        for union in ("anyOf", "oneOf"):
            for branch in s.get(union, ()):
                if not (isinstance(branch, Mapping) and branch.get("type") == "null"):
                    return self._rank(branch)
        declared = s.get("type")
        if isinstance(declared, list):
            declared = next((t for t in declared if t != "null"), "null")
        return _TYPE_ORDER.get(str(declared), 5)


def _decided_text(decided: Mapping[str, Any], word: str) -> str | None:
    """The text already chosen for a sibling field named with ``word`` (``verdict``...)."""
    return next((v for k, v in decided.items() if isinstance(v, str) and word in k.lower()), None)


_TEAMS = ("billing", "logistics", "technical", "account_security", "customer_care", "legal")


def _singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def _variant(value: Any, attempt: int) -> Any:
    """A different-but-similar value for ``uniqueItems`` arrays."""
    if isinstance(value, str):
        return f"{value} {attempt + 1}"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + attempt
    return value


def _currency(amounts: Sequence[str]) -> str:
    joined = " ".join(amounts).lower()
    if "€" in joined or "eur" in joined:
        return "EUR"
    if "£" in joined or "gbp" in joined or "pound" in joined:
        return "GBP"
    return "USD"
