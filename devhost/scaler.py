"""Queue-length scaling for devhost, per function and independent.

desired = ceil(backlog / target), clamped to [0, max]; at most ``max_step_up`` instances added
per polling interval; an instance is removed only after the backlog has stayed lower for the
cooldown, and the function returns to zero once it has been idle for the cooldown. The Event
Hub function is also capped at the hub's partition count (a partition has one reader).

Targets are host.json's: a Service Bus instance takes ``maxConcurrentCalls`` messages at once,
an Event Hub instance ``maxEventBatchSize`` events; limits come from ``scale.json``. Those are the
same numbers infra/ gives Azure and KEDA.

When the model quota, not the backlog, is the bound, more instances only make more 429s: the
``quota_cap`` is how many instances the deployment's tokens-per-minute can keep busy, given the
tokens one call is charged and how long one call takes; desired never exceeds it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ScaleLimits:
    max_instances: int = 4
    max_step_up: int = 4
    polling_interval_s: float = 1.0
    cooldown_s: float = 15.0

    @classmethod
    def from_file(cls, path: Path) -> ScaleLimits:
        data = json.loads(path.read_text(encoding="utf-8")).get("devhost", {})
        return cls(
            max_instances=int(data.get("maxInstancesPerFunction", 4)),
            max_step_up=int(data.get("maxStepUp", 4)),
            polling_interval_s=float(data.get("pollingIntervalSeconds", 1.0)),
            cooldown_s=float(data.get("cooldownSeconds", 15.0)),
        )


def quota_cap(
    *, tokens_per_minute: int, tokens_per_call: int, call_latency_s: float, per_instance: int
) -> int:
    """Instances a deployment's quota can feed: the calls in flight the quota sustains
    (calls per second x seconds per call, Little's law) over the calls one instance runs."""
    if tokens_per_minute <= 0 or tokens_per_call <= 0:
        return 0
    calls_per_s = tokens_per_minute / tokens_per_call / 60.0
    in_flight = calls_per_s * max(call_latency_s, 0.001)
    return max(1, math.ceil(in_flight / max(1, per_instance)))


@dataclass
class FunctionScaler:
    """The scaling decision of one function; ``decide`` is called once per polling interval."""

    name: str
    target_per_instance: int
    limits: ScaleLimits
    cap: int | None = None
    instances: int = 0
    _lower_since: float | None = field(default=None, repr=False)

    def desired(self, backlog: int) -> int:
        want = math.ceil(max(0, backlog) / max(1, self.target_per_instance))
        ceiling = self.limits.max_instances
        if self.cap is not None:
            ceiling = min(ceiling, self.cap)
        return max(0, min(want, ceiling))

    def decide(self, backlog: int, now: float) -> int:
        """The instance count to run now, given the backlog (waiting + in flight)."""
        want = self.desired(backlog)
        if want > self.instances:
            self.instances = min(want, self.instances + self.limits.max_step_up)
            self._lower_since = None
        elif want < self.instances:
            if self._lower_since is None:
                self._lower_since = now
            elif now - self._lower_since >= self.limits.cooldown_s:
                # Scale in one step at a time; to zero only when there is nothing left at all.
                self.instances = want if want == 0 else max(want, self.instances - 1)
                self._lower_since = now if self.instances > want else None
        else:
            self._lower_since = None
        return self.instances
