"""GuardedChatModel's decisions, with a scripted endpoint and a hand-moved clock.

The same behaviours are exercised over real HTTP against the simulator in
tests/integration/test_llm_simulator.py; here time is simulated so that cooldowns and budgets of
many seconds take none.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from shared.adapters.local.customer_budget import SqliteCustomerBudget
from shared.config import LLMSettings
from shared.domain.messages import Stage
from shared.errors import (
    BudgetExceeded,
    CircuitOpen,
    ContentFiltered,
    InvalidInput,
    PermanentError,
    RetryLater,
    TransientError,
)
from shared.llm.endpoint import (
    EndpointCall,
    EndpointContentFiltered,
    EndpointRejected,
    EndpointReply,
    EndpointServerError,
    EndpointThrottled,
    EndpointTimeout,
    RateLimitInfo,
)
from shared.llm.guarded import GuardedChatModel
from shared.llm.metrics import CountingMetrics
from shared.ports import ChatRequest
from tests.support.clock import ManualClock

Outcome = EndpointReply | Exception


def reply(content: str = '{"ok": true}', *, finish: str = "stop") -> EndpointReply:
    return EndpointReply(content, finish, prompt_tokens=40, completion_tokens=10, model="m")


class ScriptedEndpoint:
    """Answers each deployment's calls from its script, then with plain successes."""

    def __init__(self, scripts: dict[str, Sequence[Outcome]] | None = None) -> None:
        self._scripts = {d: deque(s) for d, s in (scripts or {}).items()}
        self.calls: list[EndpointCall] = []
        self.per_deployment: defaultdict[str, int] = defaultdict(int)
        self.closed = False

    async def complete(self, call: EndpointCall) -> EndpointReply:
        self.calls.append(call)
        self.per_deployment[call.deployment] += 1
        script = self._scripts.get(call.deployment)
        outcome = script.popleft() if script else reply()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self) -> None:
        self.closed = True


SETTINGS = LLMSettings(
    base_url="http://127.0.0.1:9/v1",
    deployments={stage: ("primary", "fallback") for stage in Stage},
    deployment_tpm={"primary": 60_000, "fallback": 60_000},
    prices_per_million={"primary": (0.15, 0.60), "fallback": (2.5, 10.0)},
    wait_budget_s=10.0,
    breaker_failures=2,
    breaker_cooldown_s=5.0,
    max_attempts=3,
)


def request(text: str = "hello", **changes: object) -> ChatRequest:
    base = ChatRequest(
        stage="intent",
        messages=[{"role": "system", "content": "classify"}, {"role": "user", "content": text}],
        schema_name="intent",
        json_schema={"type": "object"},
        max_tokens=100,
        customer_id="cust-1",
        conversation_id="c-1",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def model(
    endpoint: ScriptedEndpoint, settings: LLMSettings = SETTINGS, **kwargs: object
) -> tuple[GuardedChatModel, ManualClock, CountingMetrics]:
    clock = ManualClock()
    metrics = CountingMetrics()
    guarded = GuardedChatModel(
        endpoint,
        settings=settings,
        clock=clock,
        metrics=metrics,
        **kwargs,  # type: ignore[arg-type]
    )
    return guarded, clock, metrics


async def test_a_call_is_served_by_the_primary_with_tokens_and_cost() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, metrics = model(endpoint)
    result = await guarded.complete(request())
    assert result.deployment == "primary"
    assert (result.prompt_tokens, result.completion_tokens) == (40, 10)
    assert result.cost_usd == pytest.approx((40 * 0.15 + 10 * 0.60) / 1e6)
    assert not result.cached
    assert metrics.prompt_tokens["intent"] == 40
    assert endpoint.calls[0].timeout_s == SETTINGS.timeout_s


async def test_an_identical_deterministic_request_is_answered_from_the_cache() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, metrics = model(endpoint)
    first = await guarded.complete(request())
    second = await guarded.complete(request())
    assert len(endpoint.calls) == 1
    assert second.cached
    assert second.cost_usd == 0.0
    assert second.content == first.content
    assert (metrics.cache_hits, metrics.cache_misses) == (1, 1)


async def test_a_request_with_temperature_is_never_cached() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint)
    await guarded.complete(request(temperature=0.7))
    await guarded.complete(request(temperature=0.7))
    assert len(endpoint.calls) == 2


async def test_a_different_schema_misses_the_cache() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint)
    await guarded.complete(request())
    await guarded.complete(request(json_schema={"type": "object", "required": ["x"]}))
    assert len(endpoint.calls) == 2


async def test_a_429_is_honoured_and_the_call_retried_after_its_retry_after() -> None:
    throttle = EndpointThrottled("429", rate=RateLimitInfo(retry_after_s=2.5))
    endpoint = ScriptedEndpoint({"primary": [throttle]})
    guarded, clock, metrics = model(endpoint)
    started = clock.monotonic()
    result = await guarded.complete(request())
    assert result.deployment == "primary"
    assert clock.monotonic() - started >= 2.5
    assert metrics.throttles["primary"] == 1


async def test_a_retry_after_longer_than_the_wait_budget_becomes_retry_later() -> None:
    throttle = EndpointThrottled("429", rate=RateLimitInfo(retry_after_s=42.0))
    endpoint = ScriptedEndpoint({"primary": [throttle], "fallback": [throttle]})
    guarded, clock, metrics = model(endpoint)
    started = clock.monotonic()
    with pytest.raises(RetryLater) as caught:
        await guarded.complete(request())
    assert 41.0 <= caught.value.delay_s <= 43.0
    assert clock.monotonic() - started < 1.0  # nothing slept under the lock
    assert metrics.reschedules == 1


async def test_quota_booked_past_the_wait_budget_becomes_retry_later_without_a_call() -> None:
    settings = replace(SETTINGS, deployments={s: ("primary",) for s in Stage})
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint, settings)
    guarded.limiter.quota("primary").reserve(10_000, 1_000.0)  # a full window, just booked
    with pytest.raises(RetryLater) as caught:
        await guarded.complete(request())
    assert caught.value.delay_s > SETTINGS.wait_budget_s
    assert endpoint.calls == []


async def test_when_the_primary_has_no_quota_the_fallback_serves() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, metrics = model(endpoint)
    guarded.limiter.quota("primary").reserve(10_000, 1_000.0)
    result = await guarded.complete(request())
    assert result.deployment == "fallback"
    assert metrics.fallbacks[("primary", "fallback")] == 1


async def test_a_server_error_is_retried_on_the_fallback() -> None:
    endpoint = ScriptedEndpoint({"primary": [EndpointServerError("503", status=503)]})
    guarded, _, _ = model(endpoint)
    result = await guarded.complete(request())
    assert result.deployment == "fallback"
    assert [c.deployment for c in endpoint.calls] == ["primary", "fallback"]


async def test_repeated_failures_end_in_a_transient_error_after_the_attempt_limit() -> None:
    failures: list[Outcome] = [EndpointTimeout("slow") for _ in range(5)]
    endpoint = ScriptedEndpoint({"primary": failures, "fallback": list(failures)})
    guarded, _, _ = model(endpoint, replace(SETTINGS, breaker_failures=50))
    with pytest.raises(TransientError) as caught:
        await guarded.complete(request())
    assert not isinstance(caught.value, RetryLater)
    assert len(endpoint.calls) == SETTINGS.max_attempts


async def test_the_breaker_opens_and_the_fallback_takes_over_until_it_closes() -> None:
    down: list[Outcome] = [EndpointServerError("500", status=500) for _ in range(2)]
    endpoint = ScriptedEndpoint({"primary": down})
    guarded, clock, metrics = model(endpoint)
    await guarded.complete(request("one"))  # primary fails, fallback answers
    await guarded.complete(request("two"))  # primary fails again: the breaker opens
    await guarded.complete(request("three"))
    assert endpoint.per_deployment["primary"] == 2
    assert ("primary", "open") in metrics.breaker_states
    clock.advance(SETTINGS.breaker_cooldown_s)
    result = await guarded.complete(request("four"))  # the probe succeeds
    assert result.deployment == "primary"
    assert metrics.breaker_states[-1] == ("primary", "closed")


async def test_every_circuit_open_is_circuit_open_when_the_cooldown_is_short() -> None:
    down: list[Outcome] = [EndpointServerError("500", status=500) for _ in range(9)]
    endpoint = ScriptedEndpoint({"primary": down, "fallback": list(down)})
    guarded, _, _ = model(endpoint, replace(SETTINGS, max_attempts=10))
    with pytest.raises(TransientError):
        await guarded.complete(request())
    with pytest.raises(CircuitOpen) as caught:
        await guarded.complete(request("again"))
    assert caught.value.retry_in_s <= SETTINGS.breaker_cooldown_s


async def test_every_circuit_open_for_longer_than_the_wait_budget_is_retry_later() -> None:
    down: list[Outcome] = [EndpointServerError("500", status=500) for _ in range(9)]
    endpoint = ScriptedEndpoint({"primary": down, "fallback": list(down)})
    settings = replace(SETTINGS, max_attempts=10, breaker_cooldown_s=60.0, wait_budget_s=5.0)
    guarded, _, _ = model(endpoint, settings)
    with pytest.raises(TransientError):
        await guarded.complete(request())
    with pytest.raises(RetryLater) as caught:
        await guarded.complete(request("again"))
    assert caught.value.delay_s > settings.wait_budget_s


async def test_a_content_filtered_prompt_is_final_and_never_retried() -> None:
    endpoint = ScriptedEndpoint({"primary": [EndpointContentFiltered("filtered")]})
    guarded, _, _ = model(endpoint)
    with pytest.raises(ContentFiltered):
        await guarded.complete(request())
    assert len(endpoint.calls) == 1


async def test_a_content_filtered_completion_is_final_and_not_cached() -> None:
    endpoint = ScriptedEndpoint({"primary": [reply("", finish="content_filter")]})
    guarded, _, _ = model(endpoint)
    with pytest.raises(ContentFiltered):
        await guarded.complete(request())
    assert len(endpoint.calls) == 1
    await guarded.complete(request())
    assert len(endpoint.calls) == 2


async def test_a_rejected_request_is_permanent() -> None:
    endpoint = ScriptedEndpoint({"primary": [EndpointRejected("400", status=400, code="bad")]})
    guarded, _, _ = model(endpoint)
    with pytest.raises(PermanentError) as caught:
        await guarded.complete(request())
    assert "HTTP 400" in caught.value.description
    assert len(endpoint.calls) == 1


async def test_a_customer_over_the_daily_budget_is_refused_before_any_call(tmp_path: Path) -> None:
    budget = SqliteCustomerBudget(tmp_path / "b.sqlite3", limit=300)
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint, budget=budget)
    try:
        await guarded.complete(request("first"))  # ~110 estimated, 50 spent
        await guarded.complete(request("second"))
        assert await budget.used("cust-1", "2025-06-15") == 100
        await budget.add("cust-1", "2025-06-15", 150)
        with pytest.raises(BudgetExceeded) as caught:
            await guarded.complete(request("third"))
        assert "daily token budget" in caught.value.description
        assert len(endpoint.calls) == 2
    finally:
        await guarded.close()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"stage": "nonsense"}, "unknown stage"),
        ({"messages": []}, "at least one message"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user"}]}, "no text content"),
    ],
)
async def test_a_malformed_request_is_refused_with_a_reason(
    changes: dict[str, object], problem: str
) -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint)
    with pytest.raises(InvalidInput) as caught:
        await guarded.complete(request(**changes))
    assert problem in caught.value.description
    assert endpoint.calls == []


async def test_closing_closes_the_endpoint() -> None:
    endpoint = ScriptedEndpoint()
    guarded, _, _ = model(endpoint)
    await guarded.close()
    assert endpoint.closed


async def test_a_cancelled_probe_does_not_wedge_the_breaker() -> None:
    class HangingEndpoint(ScriptedEndpoint):
        async def complete(self, call: EndpointCall) -> EndpointReply:
            if call.deployment == "primary" and self.per_deployment["primary"] >= 2:
                self.per_deployment["primary"] += 1
                await asyncio.sleep(3600)
            return await super().complete(call)

    down: list[Outcome] = [EndpointServerError("500", status=500) for _ in range(2)]
    endpoint = HangingEndpoint({"primary": down})
    settings = replace(SETTINGS, deployments={s: ("primary",) for s in Stage}, max_attempts=5)
    guarded, clock, _ = model(endpoint, settings)
    with pytest.raises(TransientError):
        await guarded.complete(request("one"))  # two failures open the breaker
    clock.advance(SETTINGS.breaker_cooldown_s)
    probe = asyncio.ensure_future(guarded.complete(request("two")))
    await asyncio.sleep(0.01)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert guarded.breakers.for_deployment("primary").can_call()
