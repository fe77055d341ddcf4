"""The limiter's learned accounting and lanes as OpenTelemetry metrics, read back through the
real SDK's ``InMemoryMetricReader`` (no mock of the metrics API).

The tests record through the process's ``metrics``, as the app does: the SDK keeps the first
observable gauge of a name on a meter, so a second ``Metrics`` would report into the void.
Sources are bound methods of objects the tests drop, so none outlives its test."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from shared.config import LLMSettings, Settings
from shared.domain.messages import Priority, Stage
from shared.llm.endpoint import EndpointCall, EndpointReply, EndpointThrottled, RateLimitInfo
from shared.llm.guarded import GuardedChatModel
from shared.llm.lanes import lane
from shared.llm.limiter import QuotaLimiter
from shared.llm.quota_metrics import QuotaSnapshot
from shared.llm.tokens import default_estimator
from shared.ports import ChatRequest
from shared.telemetry import (
    LLMTelemetry,
    Metrics,
    configure_telemetry,
    metrics,
    shutdown_telemetry,
)
from tests.support.clock import ManualClock

DEPLOYMENT = "primary"
TPM = 60_000  # Azure's model: 10,000 tokens and 60 requests per 10 s window
MODEL_ATTR = "gen_ai.request.model"
LANE_ATTR = "switchboard.llm.lane"

Points = dict[tuple[str, frozenset[tuple[str, Any]]], Any]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    configure_telemetry(Settings(), metric_reader=reader)
    yield reader
    shutdown_telemetry()


def points(reader: InMemoryMetricReader) -> Points:
    data = reader.get_metrics_data()
    found: Points = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    found[key] = point if isinstance(point, HistogramDataPoint) else point.value
    return found


def at(name: str, **attributes: str) -> tuple[str, frozenset[tuple[str, Any]]]:
    attrs = {MODEL_ATTR: DEPLOYMENT, **{k.replace("_", "."): v for k, v in attributes.items()}}
    return name, frozenset(attrs.items())


class Endpoint:
    """Answers every call; the first ``throttles`` calls get a 429 with a fractional
    retry-after (Azure's ``retry-after-ms``)."""

    def __init__(self, throttles: int = 0) -> None:
        self.throttles = throttles
        self.calls: list[EndpointCall] = []

    async def complete(self, call: EndpointCall) -> EndpointReply:
        self.calls.append(call)
        if self.throttles:
            self.throttles -= 1
            raise EndpointThrottled("429", rate=RateLimitInfo(retry_after_s=0.25))
        return EndpointReply('{"ok": true}', "stop", prompt_tokens=40, completion_tokens=10)

    async def close(self) -> None:
        pass


def request() -> ChatRequest:
    return ChatRequest(
        stage="intent",
        messages=[{"role": "system", "content": "classify"}, {"role": "user", "content": "hi"}],
        schema_name="intent",
        json_schema={"type": "object"},
        max_tokens=100,
    )


def guarded_model(sink: Metrics, endpoint: Endpoint) -> tuple[GuardedChatModel, ManualClock]:
    clock = ManualClock()
    settings = LLMSettings(
        base_url="http://127.0.0.1:9/v1",
        deployments={stage: (DEPLOYMENT,) for stage in Stage},
        deployment_tpm={DEPLOYMENT: TPM},
        wait_budget_s=10.0,
        cache_enabled=False,
    )
    model = GuardedChatModel(endpoint, settings=settings, clock=clock, metrics=LLMTelemetry(sink))
    return model, clock


async def test_quota_use_limits_lanes_and_429s_are_gauges_of_the_limiter(
    reader: InMemoryMetricReader,
) -> None:
    model, _ = guarded_model(metrics, Endpoint(throttles=1))
    await model.complete(request())  # a 429, then served: one charge kept
    with lane(Priority.BATCH):
        await model.complete(request())
    charge = default_estimator().prompt_tokens(request().messages) + 100

    found = points(reader)

    assert found[at("switchboard.llm.quota.tokens.limit")] == TPM // 6
    assert found[at("switchboard.llm.quota.tokens.used")] == 2 * charge
    assert found[at("switchboard.llm.quota.tokens.used", switchboard_llm_lane="interactive")] == (
        charge
    )
    assert found[at("switchboard.llm.quota.tokens.used", switchboard_llm_lane="batch")] == charge
    assert found[at("switchboard.llm.quota.requests.used")] == 2
    assert found[at("switchboard.llm.quota.requests.limit")] == 60
    assert found[at("switchboard.llm.quota.throttles")] == 1
    assert found[at("switchboard.llm.quota.share")] == 1.0
    window = at(
        "switchboard.llm.quota.window",
        switchboard_llm_quota_charge="prompt+max",
        switchboard_llm_quota_accounting="prompt+max/10s",
    )
    assert found[window] == 10.0
    # Each lane's charged tokens: the 429'd attempt was sent too, so interactive counts two.
    lane_tokens = "switchboard.llm.quota.lane.tokens"
    assert found[at(lane_tokens, switchboard_llm_lane="interactive")] == 2 * charge
    assert found[at(lane_tokens, switchboard_llm_lane="batch")] == charge


async def test_a_dropped_model_client_stops_reporting(reader: InMemoryMetricReader) -> None:
    model, _ = guarded_model(metrics, Endpoint())
    await model.complete(request())
    assert at("switchboard.llm.quota.tokens.used") in points(reader)

    del model
    gc.collect()  # the model and its breakers refer to each other
    assert at("switchboard.llm.quota.tokens.used") not in points(reader)


def test_a_learned_accounting_change_is_counted(reader: InMemoryMetricReader) -> None:
    LLMTelemetry(metrics).accounting(
        deployment=DEPLOYMENT, model="max/60s", window_s=60.0, observations=3
    )
    key = at("switchboard.llm.quota.accounting.changes", switchboard_llm_quota_accounting="max/60s")
    assert points(reader)[key] == 1


class _Source:
    def __init__(self, limiter: QuotaLimiter | None) -> None:
        self.limiter = limiter

    def snapshots(self) -> list[QuotaSnapshot]:
        if self.limiter is None:
            raise RuntimeError("gone")
        return self.limiter.snapshots(0.0)


def test_a_failing_snapshot_source_does_not_blank_the_others(
    reader: InMemoryMetricReader,
) -> None:
    limiter = QuotaLimiter({DEPLOYMENT: TPM})
    limiter.quota(DEPLOYMENT)
    broken, working = _Source(None), _Source(limiter)
    metrics.observe_quota(broken.snapshots)
    metrics.observe_quota(working.snapshots)
    assert points(reader)[at("switchboard.llm.quota.tokens.limit")] == TPM // 6


def test_a_snapshot_survives_its_json_form_and_a_malformed_one_is_named() -> None:
    limiter = QuotaLimiter({DEPLOYMENT: TPM})
    quota = limiter.quota(DEPLOYMENT)
    quota.mark_sent(quota.reserve(300, 5.0, Priority.BATCH), 5.0)
    (snapshot,) = limiter.snapshots(6.0)
    assert QuotaSnapshot.from_dict(snapshot.to_dict()) == snapshot
    assert snapshot.lanes["batch"].tokens_used == 300
    broken = snapshot.to_dict()
    del broken["charge"]
    with pytest.raises(ValueError, match="charge"):
        QuotaSnapshot.from_dict(broken)
