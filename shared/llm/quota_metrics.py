"""Optional metrics of the quota limiter: the learned accounting and the lanes.

A metrics adapter that also implements ``QuotaMetrics`` (checked at runtime, so adapters that
do not are unaffected) is told

* ``accounting``: a deployment's accounting model was learned or changed (``prompt+max/10s``
  is Azure's documented model; ``max/60s`` charges ``max_tokens`` over a minute window);
* ``lane_call``: one call was sent in a lane, with the tokens it was charged and how long it
  waited for quota, so interactive and batch throughput and waits can be charted apart.

A metrics adapter that implements ``QuotaObserver`` is also handed a source of
``QuotaSnapshot`` values (each deployment's learned accounting, limits and current use, per
lane) to read whenever it collects, so gauges show the limiter's state without a call path
having to push it. The same values, as ``to_dict``, travel to ``devhost status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class LaneSnapshot:
    """One lane's token limit in the current window, and what it has charged there."""

    token_limit: float
    tokens_used: float


@dataclass(frozen=True)
class QuotaSnapshot:
    """A deployment's limiter as of one moment: what it learned and how full it is.

    Limits and use are this instance's: its share of the deployment (``share`` says which
    part that is) and its own calls' charges in the current window, booked ahead included
    (not what the headers showed others to have used). ``charge`` and ``window_s`` are the
    inferred accounting (``accounting`` names both), ``settled`` whether enough answers were
    scored to trust it.
    """

    deployment: str
    accounting: str
    charge: str
    window_s: float
    observations: int
    settled: bool
    share: float
    token_limit: float
    tokens_used: float
    request_limit: float
    requests_used: float
    guard_s: float
    throttles: int
    lanes: Mapping[str, LaneSnapshot] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for a status file)."""
        return asdict(self) | {"lanes": {k: asdict(v) for k, v in self.lanes.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuotaSnapshot:
        """The inverse of ``to_dict``; ``ValueError`` names what is missing or malformed."""
        try:
            lanes = {
                str(k): LaneSnapshot(float(v["token_limit"]), float(v["tokens_used"]))
                for k, v in dict(data.get("lanes") or {}).items()
            }
            return cls(
                deployment=str(data["deployment"]),
                accounting=str(data["accounting"]),
                charge=str(data["charge"]),
                window_s=float(data["window_s"]),
                observations=int(data["observations"]),
                settled=bool(data["settled"]),
                share=float(data["share"]),
                token_limit=float(data["token_limit"]),
                tokens_used=float(data["tokens_used"]),
                request_limit=float(data["request_limit"]),
                requests_used=float(data["requests_used"]),
                guard_s=float(data["guard_s"]),
                throttles=int(data["throttles"]),
                lanes=lanes,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a quota snapshot: {exc!r}") from None


SnapshotSource = Callable[[], Sequence[QuotaSnapshot]]


@runtime_checkable
class QuotaObserver(Protocol):
    def observe_quota(self, source: SnapshotSource) -> None:
        """Read ``source`` at each collection (it may be a bound method: held weakly)."""
        ...


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
