"""Choosing an enum's value from what the request says.

A critic's ``approve/revise/escalate`` follows the escalation signals and a seeded revise roll;
language codes follow the detected language; sentiment and severity scales follow the text's
tone; other labels are scored against the customer's words (``analysis.best_label``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from devhost.simulator import vocabulary as vocab
from devhost.simulator.analysis import TextAnalysis, best_label, normalize_label

REVISE_PERCENT = 15
"""How often (in %) a critic asks for a revision when nothing else decides, per draft."""

SCALE_WORDS = ("priority", "severity", "urgency", "level")
"""Field names whose numbers or labels follow the text's severity."""
LANGUAGE_WORDS = ("language", "lang", "locale")


def choose_enum(
    s: Mapping[str, Any], name: str, a: TextAnalysis, rng: random.Random, seed: int
) -> Any:
    """One of ``s["enum"]`` (non-empty) for the field ``name``."""
    values = list(s["enum"])
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) != len(values):
        return _ordinal(values, name, s, a, rng)
    labels = {normalize_label(v): v for v in strings}
    if "approve" in labels and ("revise" in labels or "escalate" in labels):
        return labels[_verdict(set(labels), a, seed)]
    if any(k in name.lower() for k in LANGUAGE_WORDS) or all(
        v.split("-")[0].lower() in vocab.LANGUAGE_CODES for v in strings
    ):
        return _language(strings, a.language)
    sentiment = _sentiment(labels, a)
    if sentiment is not None:
        return sentiment
    scale = [v for v in strings if normalize_label(v) in vocab.SEVERITY_SCALE]
    if len(scale) >= 2 and len(scale) == len(strings):
        return min(
            scale,
            key=lambda v: (
                abs(vocab.SEVERITY_SCALE[normalize_label(v)] - a.severity),
                scale.index(v),
            ),
        )
    if a.has_pii and any("pii" in k for k in labels):
        return next(v for k, v in labels.items() if "pii" in k)
    best = best_label(strings, a.grams)
    if best.score > 0 or normalize_label(best.value) in vocab.FALLBACK_VALUES:
        return best.value
    # Without evidence, never claim personal data the text does not contain.
    plain = [v for v in strings if "pii" not in normalize_label(v)] or strings
    return rng.choice(plain)


def _ordinal(
    values: list[Any], name: str, s: Mapping[str, Any], a: TextAnalysis, rng: random.Random
) -> Any:
    numbers = sorted(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))
    if numbers and len(numbers) == len(values) and any(k in name.lower() for k in SCALE_WORDS):
        return numbers[round(a.severity / 3 * (len(numbers) - 1))]
    if "default" in s and any(s["default"] == v for v in values):
        return s["default"]
    return rng.choice(values)


def _verdict(labels: set[str], a: TextAnalysis, seed: int) -> str:
    """A critic's decision: escalate on legal/fraud/anger, sometimes revise, else approve."""
    if a.escalation_signal and "escalate" in labels:
        return "escalate"
    if "revise" in labels and not a.final_revision:
        digest = hashlib.sha256(f"{seed}\x1frevise\x1f{a.evidence}".encode()).digest()
        if int.from_bytes(digest[:4], "big") % 100 < REVISE_PERCENT:
            return "revise"
    return "approve"


def _language(values: Sequence[str], detected: str) -> str:
    for wanted in (detected, "en"):
        for value in values:
            if value.split("-")[0].split("_")[0].lower() == wanted:
                return value
    return values[0]


def _sentiment(labels: Mapping[str, str], a: TextAnalysis) -> str | None:
    if not {"positive", "negative"} <= set(labels):
        return None
    if a.angry or a.intent.value in ("complaint", "fraud_report"):
        return labels["negative"]
    if a.intent.value == "feedback":
        return labels["positive"]
    return labels.get("neutral", labels.get("mixed", labels["negative"]))
