"""The quota gauges: what each deployment's limiter learned and how full its windows are, read
from ``DeploymentQuota.snapshot`` on every collection (``shared.llm.quota_metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from opentelemetry.metrics import CallbackOptions, Observation

from shared.llm.quota_metrics import QuotaSnapshot
from shared.telemetry.attributes import GEN_AI_REQUEST_MODEL, LLM_LANE

QUOTA_CHARGE: Final = "switchboard.llm.quota.charge"
QUOTA_ACCOUNTING: Final = "switchboard.llm.quota.accounting"

_Read = Callable[[QuotaSnapshot], Iterable[tuple[float, dict[str, str]]]]


def _tokens_limit(s: QuotaSnapshot) -> Iterable[tuple[float, dict[str, str]]]:
    yield s.token_limit, {}
    for lane, state in s.lanes.items():
        yield state.token_limit, {LLM_LANE: lane}


def _tokens_used(s: QuotaSnapshot) -> Iterable[tuple[float, dict[str, str]]]:
    yield s.tokens_used, {}
    for lane, state in s.lanes.items():
        yield state.tokens_used, {LLM_LANE: lane}


def _window(s: QuotaSnapshot) -> Iterable[tuple[float, dict[str, str]]]:
    yield s.window_s, {QUOTA_CHARGE: s.charge, QUOTA_ACCOUNTING: s.accounting}


def throttle_readings(s: QuotaSnapshot) -> Iterable[tuple[float, dict[str, str]]]:
    yield s.throttles, {}


QUOTA_GAUGES: Final[tuple[tuple[str, str, str, _Read], ...]] = (
    (
        "switchboard.llm.quota.tokens.limit",
        "{token}",
        "Tokens this instance may charge per window (per lane too)",
        _tokens_limit,
    ),
    (
        "switchboard.llm.quota.tokens.used",
        "{token}",
        "Tokens charged in the current window, booked ahead included (per lane too)",
        _tokens_used,
    ),
    (
        "switchboard.llm.quota.requests.limit",
        "{request}",
        "Requests this instance may send per request window",
        lambda s: [(s.request_limit, {})],
    ),
    (
        "switchboard.llm.quota.requests.used",
        "{request}",
        "Requests sent in the current request window",
        lambda s: [(s.requests_used, {})],
    ),
    (
        "switchboard.llm.quota.window",
        "s",
        "The inferred token window, with the inferred charge as attributes",
        _window,
    ),
    (
        "switchboard.llm.quota.share",
        "1",
        "This instance's share of the deployment",
        lambda s: [(s.share, {})],
    ),
)


def quota_observations(
    snapshots: Callable[[], list[QuotaSnapshot]], read: _Read
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, {GEN_AI_REQUEST_MODEL: snapshot.deployment, **extra})
            for snapshot in snapshots()
            for value, extra in read(snapshot)
        ]

    return observe
