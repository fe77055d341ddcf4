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
import hashlib
import logging
import math
import random
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from devhost.simulator import vocabulary as vocab
from devhost.simulator import writer
from devhost.simulator.analysis import (
    TextAnalysis,
    amount_value,
    best_label,
    normalize_label,
)
from devhost.simulator.patterns import example_for
from devhost.simulator.schemas import SchemaResolutionError, resolve_ref

log = logging.getLogger(__name__)

REVISE_PERCENT = 15
"""How often (in %) a critic asks for a revision when nothing else decides, per draft."""

_MAX_DEPTH = 24
_SHALLOW_DEPTH = 5  # below this, optional properties are left out and arrays kept minimal
_MAX_REF_HOPS = 64

_TEXT_FIELDS = ("reply", "text", "answer", "response", "body", "message", "draft", "content")
_SUMMARY_FIELDS = ("summary", "synopsis", "abstract", "gist")
_REASON_FIELDS = ("reason", "rationale", "explanation", "justification", "reasoning", "why")
_PROBLEM_FIELDS = ("problem", "issue", "violation", "concern", "finding", "error", "change")
_DETAIL_FIELDS = ("detail", "description", "explanation", "message", "fix", "suggestion", "note")
_HUMAN_FLAGS = ("needs_human", "human", "requires_", "require_", "escalat", "handoff", "hand_off")
_TYPE_ORDER = {"enum": 0, "boolean": 1, "integer": 2, "number": 2, "array": 3, "object": 4}
_FILLER = " Please let us know if there is anything else we can help with."


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
        for _ in range(_MAX_REF_HOPS):
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
            return self._enum(s, name)
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

    def _enum(self, s: Mapping[str, Any], name: str) -> Any:
        values = list(s["enum"])
        if not values:
            raise SchemaGenerationError(f"enum of {name or 'the root'} is empty")
        strings = [v for v in values if isinstance(v, str)]
        if len(strings) != len(values):
            return self._ordinal_enum(values, name, s)
        labels = {normalize_label(v): v for v in strings}
        if "approve" in labels and ("revise" in labels or "escalate" in labels):
            return labels[self._verdict(set(labels))]
        if self._is_language(name, strings):
            return self._language_choice(strings)
        sentiment = self._sentiment_choice(labels)
        if sentiment is not None:
            return sentiment
        scale = [v for v in strings if normalize_label(v) in vocab.SEVERITY_SCALE]
        if len(scale) >= 2 and len(scale) == len(strings):
            return self._severity_choice(scale)
        if self._a.has_pii and any("pii" in k for k in labels):
            return next(v for k, v in labels.items() if "pii" in k)
        best = best_label(strings, self._a.grams)
        if best.score > 0 or normalize_label(best.value) in vocab.FALLBACK_VALUES:
            return best.value
        # Without evidence, never claim personal data the text does not contain.
        plain = [v for v in strings if "pii" not in normalize_label(v)] or strings
        return self._rng.choice(plain)

    def _ordinal_enum(self, values: list[Any], name: str, s: Mapping[str, Any]) -> Any:
        numbers = sorted(v for v in values if _is_number(v))
        key = name.lower()
        if (
            numbers
            and len(numbers) == len(values)
            and any(k in key for k in ("priority", "severity", "urgency", "level"))
        ):
            return numbers[round(self._a.severity / 3 * (len(numbers) - 1))]
        if "default" in s and any(s["default"] == v for v in values):
            return s["default"]
        return self._rng.choice(values)

    def _verdict(self, labels: set[str]) -> str:
        """A critic's decision: escalate on legal/fraud/anger, sometimes revise, else approve."""
        a = self._a
        if a.escalation_signal and "escalate" in labels:
            return "escalate"
        if "revise" in labels and not a.final_revision and self._revise_roll():
            return "revise"
        return "approve"

    def _revise_roll(self) -> bool:
        digest = hashlib.sha256(f"{self._seed}\x1frevise\x1f{self._a.evidence}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < REVISE_PERCENT

    @staticmethod
    def _is_language(name: str, values: Sequence[str]) -> bool:
        key = name.lower()
        if any(k in key for k in ("language", "lang", "locale")):
            return True
        return all(v.split("-")[0].lower() in vocab.LANGUAGE_CODES for v in values)

    def _language_choice(self, values: Sequence[str]) -> str:
        for wanted in (self._a.language, "en"):
            for value in values:
                if value.split("-")[0].split("_")[0].lower() == wanted:
                    return value
        return values[0]

    def _sentiment_choice(self, labels: Mapping[str, str]) -> str | None:
        if not {"positive", "negative"} <= set(labels):
            return None
        if self._a.angry or self._a.intent.value in ("complaint", "fraud_report"):
            return labels["negative"]
        if self._a.intent.value == "feedback":
            return labels["positive"]
        return labels.get("neutral", labels.get("mixed", labels["negative"]))

    def _severity_choice(self, values: Sequence[str]) -> str:
        target = self._a.severity
        return min(
            values,
            key=lambda v: (abs(vocab.SEVERITY_SCALE[normalize_label(v)] - target), values.index(v)),
        )

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
            verdict = next((v for k, v in decided.items() if "verdict" in k.lower()), None)
            return verdict == "approve" if isinstance(verdict, str) else not a.escalation_signal
        default = s.get("default")
        return default if isinstance(default, bool) else False

    def _number(self, s: Mapping[str, Any], name: str, *, integer: bool) -> int | float:
        key = name.lower()
        low, high = _bounds(s, integer=integer)
        natural: float
        if any(k in key for k in ("confidence", "probability", "certainty", "likelihood", "score")):
            jitter = self._rng.uniform(-0.03, 0.03)
            unit = min(0.97, 0.6 + 0.35 * self._a.evidence_strength + jitter)
            natural = _scale_unit(unit, low, high)
        elif "sentiment" in key:
            unit = 0.2 if self._a.angry else (0.75 if self._a.intent.value == "feedback" else 0.5)
            natural = _scale_unit(unit, -1.0 if low is None else low, 1.0 if high is None else high)
        elif any(k in key for k in ("priority", "severity", "urgency", "level")):
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
        return _fit_number(natural, s, low, high, integer=integer)

    # -- strings ----------------------------------------------------------------------------

    def _string(self, s: Mapping[str, Any], name: str, decided: Mapping[str, Any]) -> str:
        fmt = s.get("format")
        text = self._formatted(fmt) if isinstance(fmt, str) else None
        if text is None:
            text = self._named_text(name, decided)
        pattern = s.get("pattern")
        if isinstance(pattern, str):
            matched = example_for(pattern, self._rng, preferred=text)
            if matched is None:
                log.debug("no example found for a pattern; the answer may not match it")
            else:
                text = matched
        return _fit_length(text, s.get("minLength", 0), s.get("maxLength"))

    def _formatted(self, fmt: str) -> str | None:
        moment = datetime(2025, 1, 6, 9, 0, tzinfo=UTC) + timedelta(
            minutes=self._rng.randint(0, 500_000)
        )
        if fmt == "date-time":
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        if fmt == "date":
            return moment.strftime("%Y-%m-%d")
        if fmt == "time":
            return moment.strftime("%H:%M:%S")
        if fmt == "uuid":
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        if fmt == "email":
            return "customer@example.com"
        if fmt in ("uri", "url", "iri"):
            return "https://example.com/support"
        if fmt in ("hostname", "idn-hostname"):
            return "example.com"
        if fmt == "ipv4":
            return "192.0.2.10"
        if fmt == "ipv6":
            return "2001:db8::10"
        if fmt == "duration":
            return "P3D"
        return None

    def _named_text(self, name: str, decided: Mapping[str, Any]) -> str:
        key = name.lower()
        a, level = self._a, self._level
        intent = next(
            (v for k, v in decided.items() if isinstance(v, str) and "intent" in k.lower()), None
        )
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
        if any(k in key for k in ("language", "lang", "locale")):
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
            verdict = next(
                (v for k, v in decided.items() if isinstance(v, str) and "verdict" in k.lower()),
                None,
            )
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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TEAMS = ("billing", "logistics", "technical", "account_security", "customer_care", "legal")


def _bounds(s: Mapping[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    low: float | None = s.get("minimum")
    high: float | None = s.get("maximum")
    ex_low, ex_high = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
        bumped = math.floor(ex_low) + 1 if integer else ex_low + _nudge(ex_low, ex_high)
        low = bumped if low is None else max(low, bumped)
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
        lowered = math.ceil(ex_high) - 1 if integer else ex_high - _nudge(ex_low, ex_high)
        high = lowered if high is None else min(high, lowered)
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


def _nudge(low: Any, high: Any) -> float:
    if isinstance(low, int | float) and isinstance(high, int | float) and high > low:
        return (high - low) / 1000
    return 1e-3


def _scale_unit(unit: float, low: float | None, high: float | None) -> float:
    """Map a 0..1 value into the field's range (0..1 when unbounded, 0..100 style when wider)."""
    lo = 0.0 if low is None else low
    hi = (1.0 if lo < 1 else lo + 1) if high is None else high
    return lo + unit * (hi - lo)


def _fit_number(
    natural: float, s: Mapping[str, Any], low: float | None, high: float | None, *, integer: bool
) -> int | float:
    value = natural
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    step = s.get("multipleOf")
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        k = round(value / step)
        if low is not None and k * step < low:
            k = math.ceil(low / step)
        if high is not None and k * step > high:
            k = math.floor(high / step)
        value = k * step
        decimals = max(0, -math.floor(math.log10(step))) + 2 if step < 1 else 0
        value = round(value, decimals) if decimals else value
    if integer:
        return round(value)
    return round(float(value), 6) if step is None else float(value)


def _fit_length(text: str, low: int, high: int | None) -> str:
    """Shorten at a word (or sentence) boundary, or pad with a closing sentence, to fit."""
    if high is not None and len(text) > high:
        cut = text[:high]
        sentence_end = max(cut.rfind(". "), cut.rfind("; "))
        if sentence_end + 1 >= max(low, 1) and sentence_end > high // 2:
            cut = cut[: sentence_end + 1]
        elif " " in cut and cut.rfind(" ") >= low:
            cut = cut[: cut.rfind(" ")].rstrip(",;:")
        text = cut
    while len(text) < low:
        text += _FILLER
    if high is not None and len(text) > high:
        text = text[:high]
    return text


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
    for _ in range(_MAX_REF_HOPS):
        if not isinstance(current, Mapping) or "$ref" not in current:
            break
        try:
            current = resolve_ref(base, current["$ref"])
        except SchemaResolutionError:
            return {}
    return current if isinstance(current, Mapping) else {}
