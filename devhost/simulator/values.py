"""Scalar values that honour a schema's keywords: numeric bounds and steps, string lengths,
string formats. The generator picks a natural value; these make it fit."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

_FILLER = " Please let us know if there is anything else we can help with."


def bounds(s: Mapping[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
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


def scale_unit(unit: float, low: float | None, high: float | None) -> float:
    """Map a 0..1 value into the field's range (0..1 when unbounded, 0..100 style when wider)."""
    lo = 0.0 if low is None else low
    hi = (1.0 if lo < 1 else lo + 1) if high is None else high
    return lo + unit * (hi - lo)


def fit_number(
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


def fit_length(text: str, low: int, high: int | None) -> str:
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


# Values of the string formats JSON Schema defines (draft 2020-12, section 7.3), by name.
_TIME_FORMATS = {"date-time": "%Y-%m-%dT%H:%M:%SZ", "date": "%Y-%m-%d", "time": "%H:%M:%S"}
_FIXED_FORMATS = {
    "email": "customer@example.com",
    **dict.fromkeys(("uri", "url", "iri"), "https://example.com/support"),
    **dict.fromkeys(("hostname", "idn-hostname"), "example.com"),
    "ipv4": "192.0.2.10",
    "ipv6": "2001:db8::10",
    "duration": "P3D",
}


def formatted(fmt: str, rng: random.Random) -> str | None:
    """A value of a string ``format`` (date-time, uuid, email...), or None for others."""
    moment = datetime(2025, 1, 6, 9, 0, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 500_000))
    if fmt in _TIME_FORMATS:
        return moment.strftime(_TIME_FORMATS[fmt])
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return _FIXED_FORMATS.get(fmt)
