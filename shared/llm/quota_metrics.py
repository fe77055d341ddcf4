"""Optional metrics of the quota limiter: the learned accounting and the lanes.

A metrics adapter that also implements ``QuotaMetrics`` (checked at runtime, so adapters that
do not are unaffected) is told

* ``accounting``: a deployment's accounting model was learned or changed (``prompt+max/10s``
  is Azure's documented model; ``max/60s`` charges ``max_tokens`` over a minute window);
* ``lane_call``: one call was sent in a lane, with the tokens it was charged and how long it
  waited for quota, so interactive and batch throughput and waits can be charted apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class QuotaMetrics(Protocol):
    def accounting(
        self, *, deployment: str, model: str, window_s: float, observations: int
    ) -> None: ...

    def lane_call(self, *, deployment: str, lane: str, tokens: float, waited_s: float) -> None: ...


@dataclass
class CountingQuotaMetrics:
    """Keeps the last model per deployment and totals per lane (tests, benchmarks)."""

    models: dict[str, str] = field(default_factory=dict)
    changes: list[tuple[str, str, int]] = field(default_factory=list)
    lane_tokens: Counter[str] = field(default_factory=Counter)
    lane_calls: Counter[str] = field(default_factory=Counter)
    lane_waits: dict[str, list[float]] = field(default_factory=dict)

    def accounting(
        self, *, deployment: str, model: str, window_s: float, observations: int
    ) -> None:
        self.models[deployment] = model
        self.changes.append((deployment, model, observations))

    def lane_call(self, *, deployment: str, lane: str, tokens: float, waited_s: float) -> None:
        self.lane_tokens[lane] += int(tokens)
        self.lane_calls[lane] += 1
        self.lane_waits.setdefault(lane, []).append(waited_s)
