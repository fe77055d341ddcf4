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
    charged: dict[str, int] = field(default_factory=dict)
    """Tokens each deployment's quota windows counted between the burst and the drain."""
    throttled: dict[str, int] = field(default_factory=dict)

    def quota_use(self, deployment: str) -> float | None:
        """Charged tokens / what the TPM allows over the drain: 1.0 is the quota used in full."""
        if self.drained_s is None or not self.drained_s:
            return None
        return self.charged.get(deployment, 0) / (self.spec.tpm * self.drained_s / 60.0)

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
