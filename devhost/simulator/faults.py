"""Which fault, if any, a request gets: from its ``x-sim-fault`` header or the seeded dice.

A fault is a string: ``"429"``, ``"timeout"``, ``"malformed"``, ``"schema"``,
``"content_filter"`` (prompt side, HTTP 400), ``"content_filter_completion"`` (HTTP 200 with
``finish_reason=content_filter``), or an HTTP status 400-599 as digits. ``none`` in the header
suppresses random faults for that request.
"""

from __future__ import annotations

import random

from devhost.simulator.config import FAULT_KINDS, Faults

FAULT_HEADER = "x-sim-fault"
NO_FAULT = "none"


def parse_fault_header(value: str) -> str | None:
    """The fault a header value asks for (None for ``none``); ValueError when unknown."""
    wanted = value.strip().lower()
    if wanted == NO_FAULT:
        return None
    if wanted in FAULT_KINDS:
        return wanted
    if wanted.isdigit() and 400 <= int(wanted) <= 599:
        return str(int(wanted))
    raise ValueError(
        f"unknown {FAULT_HEADER} value {value!r}; expected one of "
        f"{', '.join(FAULT_KINDS)}, an HTTP status 400-599, or {NO_FAULT}"
    )


class FaultDice:
    """Draws random faults in arrival order from one seeded generator."""

    def __init__(self, faults: Faults, *, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed if faults.seed is not None else seed)

    def draw(self) -> str | None:
        """One request's fault, with the configured probabilities (None most of the time)."""
        faults = self.faults
        if faults.total_rate <= 0:
            return None
        roll = self._rng.random()
        buckets: list[tuple[str, float]] = [
            (str(status), rate) for status, rate in sorted(faults.error_rates.items())
        ]
        buckets += [
            ("timeout", faults.timeout_rate),
            ("malformed", faults.malformed_json_rate),
            ("schema", faults.schema_violation_rate),
            ("content_filter", faults.content_filter_rate),
        ]
        edge = 0.0
        for kind, rate in buckets:
            edge += rate
            if roll < edge:
                if kind == "content_filter" and self._rng.random() < 0.5:
                    return "content_filter_completion"
                return kind
        return None
