"""One burst phase of :mod:`bench.burst`: what it was asked to do, and what it measured.

The result keeps the scaler's samples and derives the printed figures from them: when each
function's backlog and instances rose, its peak, the scale-out time, the cost in worker-seconds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devhost.scaler import ScaleLimits
from shared.domain.conversation import FINAL_STATUSES

FUNCTION_ORDER = ("ingest", "intent_agent", "response_agent", "critic_agent", "escalation_agent")


@dataclass(frozen=True)
class PhaseSpec:
    """One burst: how many conversations, against what latency and quota."""

    name: str
    conversations: int
    latency_ms: float
    tpm: int
    limits: ScaleLimits
    timeout_s: float
    quota_aware: bool = True


@dataclass
class PhaseResult:
    """What one burst measured; times are seconds since the burst was posted."""

    spec: PhaseSpec
    history: list[dict[str, Any]]
    burst_at: float
    statuses: Counter[str] = field(default_factory=Counter)
    drained_s: float | None = None
    zero_s: float | None = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: list[tuple[float, dict[str, dict[str, int]]]] = field(default_factory=list)
    """The simulator's counters per deployment (``charged_tokens``, ``rate_limited``,
    ``requests``), sampled every few seconds: (seconds since the burst, counters)."""

    @property
    def measured_s(self) -> float | None:
        """The span quota use is measured over: burst to drain, or to the last sample if the
        burst had not drained when the phase stopped."""
        if self.drained_s is not None:
            return self.drained_s
        return self.usage[-1][0] if self.usage else None

    def deployments(self) -> list[str]:
        return sorted({name for _, counters in self.usage for name in counters})

    def _counter_at(self, t: float, deployment: str, key: str) -> float:
        """A counter at ``t``, linear between the samples around it."""
        points = [(at, c.get(deployment, {}).get(key, 0)) for at, c in self.usage]
        if not points:
            return 0.0
        if t <= points[0][0]:
            return float(points[0][1])
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return float(points[-1][1])

    def quota_use(self, deployment: str, *, middle: float = 1.0) -> float | None:
        """Charged tokens / what the TPM allows, over the measured span (``middle`` < 1: over
        that central fraction of it, leaving out the ramp-up and the tail); 1.0 is the quota
        used in full."""
        span = self.measured_s
        if not span:
            return None
        start = span * (1.0 - middle) / 2.0
        end = span - start
        charged = self._counter_at(end, deployment, "charged_tokens") - self._counter_at(
            start, deployment, "charged_tokens"
        )
        return charged / (self.spec.tpm * (end - start) / 60.0)

    def throttled_share(self, deployment: str) -> tuple[int, float | None]:
        """429s over the measured span, and their share of the calls made in it."""
        span = self.measured_s
        if not span:
            return 0, None
        throttled = self._counter_at(span, deployment, "rate_limited") - self._counter_at(
            0.0, deployment, "rate_limited"
        )
        calls = self._counter_at(span, deployment, "requests") - self._counter_at(
            0.0, deployment, "requests"
        )
        return int(throttled), (throttled / calls if calls else None)

    def series(self, key: str, function: str) -> tuple[list[float], list[int]]:
        """One function's ``backlog``, ``instances`` or ``quotaCap`` over time."""
        ts, ys = [], []
        for sample in self.history:
            if function in sample.get(key, {}):
                ts.append(sample["t"] - self.burst_at)
                ys.append(int(sample[key][function]))
        return ts, ys

    def functions(self) -> list[str]:
        seen = {f for sample in self.history for f in sample.get("instances", {})}
        return [f for f in FUNCTION_ORDER if f in seen] + sorted(seen - set(FUNCTION_ORDER))

    def first(self, key: str, function: str) -> float | None:
        """When a function's ``backlog`` or ``instances`` first rose above zero."""
        ts, ys = self.series(key, function)
        return next((t for t, y in zip(ts, ys, strict=True) if y > 0 and t >= 0), None)

    def peak(self, function: str) -> tuple[int, float | None]:
        """A function's most instances, and when it first ran that many."""
        ts, ys = self.series("instances", function)
        top = max(ys, default=0)
        when = next((t for t, y in zip(ts, ys, strict=True) if y == top and t >= 0), None)
        return top, when if top > 0 else None

    def busy_caps(self, function: str) -> list[int]:
        """A function's quota caps while it had a backlog (when the cap could matter)."""
        _, backlog = self.series("backlog", function)
        _, caps = self.series("quotaCap", function)
        return [c for b, c in zip(backlog, caps, strict=False) if b > 0]

    def scaled_out_s(self) -> tuple[str, int, float | None]:
        """Burst -> the function the burst lands on (the first to have a backlog) at its peak."""
        landed = [(t, f) for f in self.functions() if (t := self.first("backlog", f)) is not None]
        if not landed:
            return "-", 0, None
        function = min(landed)[1]
        top, when = self.peak(function)
        return function, top, when

    def all_at_peak_s(self) -> tuple[int, float | None]:
        """Burst -> every function has reached its own peak; and the most instances at once."""
        times = [self.peak(f)[1] for f in self.functions()]
        total = max((sum(s["instances"].values()) for s in self.history), default=0)
        reached = [t for t in times if t is not None]
        return total, max(reached) if reached else None

    def worker_seconds(self) -> float:
        """Instances x seconds from the burst to the end: what the burst cost in processes."""
        total = 0.0
        for before, after in itertools.pairwise(self.history):
            if after["t"] > self.burst_at:
                span = after["t"] - max(before["t"], self.burst_at)
                total += span * sum(before["instances"].values())
        return total

    @property
    def finished(self) -> int:
        return sum(self.statuses[s] for s in FINAL_STATUSES)
