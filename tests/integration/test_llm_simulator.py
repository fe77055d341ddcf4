"""The LLM layer over real HTTP against the Azure OpenAI simulator on 127.0.0.1.

Faults are injected per request with the simulator's ``x-sim-fault`` header, added by a request
hook of the SDK's own HTTP client for the deployments a test names; a response hook counts what
came back. Everything else is the production path: ``OpenAIChatEndpoint`` on the openai SDK,
``GuardedChatModel``, the simulator's real rate limiter and its 429 headers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import openai
import pytest

from devhost.bindings import service_bus_message
from devhost.broker import Broker, ReceivedMessage
from devhost.broker.publisher import BrokerPublisher
from devhost.simulator import (
    DeploymentLimits,
    Faults,
    LatencyModel,
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)
from shared import bootstrap
from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
from shared.bootstrap import build_chat_model
from shared.config import LLMSettings, Secret, Settings
from shared.domain.messages import Envelope, Stage
from shared.errors import ContentFiltered, PermanentError, RetryLater, TransientError
from shared.llm.budget import RESCHEDULE_JITTER
from shared.llm.guarded import GuardedChatModel
from shared.llm.metrics import CountingMetrics
from shared.ports import ChatRequest
from tests.conftest import make_settings
from tests.support.broker import pipeline_broker
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, hub_event

pytestmark = pytest.mark.integration

KEY = "test-only-key"  # the key tests/conftest.py puts in the test settings
API_VERSION = "2024-10-21"
SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["intent", "confidence"],
    "additionalProperties": False,
}


def simulator_config() -> SimulatorConfig:
    return SimulatorConfig(
        api_key=KEY,
        deployments={
            "primary": DeploymentLimits(tpm=600_000),
            "fallback": DeploymentLimits(tpm=600_000),
            "small": DeploymentLimits(tpm=6_000),  # 1,000 tokens per 10 s window
        },
        latency=LatencyModel(fixed_ms=20),
        faults=Faults(timeout_s=3.0),
    )


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(simulator_config())
    yield sim
    await sim.stop()


@pytest.fixture
async def still_simulator() -> AsyncIterator[RunningSimulator]:
    """The simulator on a clock that never moves: tokens spent in its window stay there, so a
    429's retry-after is exactly the window, ``QUOTA_WINDOW_S``, however slow the test runs."""
    sim = await start_simulator(simulator_config(), clock=FakeClock(500.0))
    yield sim
    await sim.stop()


QUOTA_WINDOW_S = 10.0


@dataclass
class Wire:
    """Per-deployment fault plan for outgoing requests, and counts of incoming answers."""

    faults: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    rewrite: dict[str, str | None] = field(default_factory=dict)

    def fail(self, deployment: str, fault: str, times: int = 1) -> None:
        self.faults[deployment].extend([fault] * times)

    def calls(self, deployment: str) -> int:
        return sum(n for (d, _), n in self.statuses.items() if d == deployment)

    def http_client(self) -> Any:
        async def on_request(request: Any) -> None:
            deployment = _deployment_of(request.url.path)
            plan = self.faults.get(deployment)
            request.headers["x-sim-fault"] = plan.popleft() if plan else "none"

        async def on_response(response: Any) -> None:
            deployment = _deployment_of(response.request.url.path)
            self.statuses[(deployment, response.status_code)] += 1
            for name, value in self.rewrite.items():
                if value is None:
                    response.headers.pop(name, None)
                else:
                    response.headers[name] = value

        return openai.DefaultAsyncHttpxClient(
            event_hooks={"request": [on_request], "response": [on_response]}
        )


def _deployment_of(path: str) -> str:
    parts = path.split("/")
    return parts[parts.index("deployments") + 1] if "deployments" in parts else ""


def llm_settings(sim: RunningSimulator, **changes: Any) -> LLMSettings:
    base = LLMSettings(
        endpoint=sim.base_url,
        api_key=Secret(KEY),
        api_version=API_VERSION,
        deployments={stage: ("primary", "fallback") for stage in Stage},
        deployment_tpm={"primary": 600_000, "fallback": 600_000},
        prices_per_million={"primary": (0.15, 0.60), "fallback": (2.50, 10.00)},
        timeout_s=5.0,
        wait_budget_s=5.0,
        breaker_failures=2,
        breaker_cooldown_s=0.5,
    )
    return replace(base, **changes)


@dataclass
class Harness:
    model: GuardedChatModel
    wire: Wire
    metrics: CountingMetrics
    sdk: openai.AsyncAzureOpenAI

    async def close(self) -> None:
        await self.model.close()
        await self.sdk.close()


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        await harness.close()


def guarded(
    sim: RunningSimulator, made: list[Harness], settings: LLMSettings | None = None
) -> Harness:
    settings = settings or llm_settings(sim)
    wire = Wire()
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url,
        api_key=KEY,
        api_version=API_VERSION,
        max_retries=0,
        timeout=settings.timeout_s,
        http_client=wire.http_client(),
    )
    metrics = CountingMetrics()
    model = GuardedChatModel(
        OpenAIChatEndpoint(settings, client=sdk), settings=settings, metrics=metrics
    )
    harness = Harness(model, wire, metrics, sdk)
    made.append(harness)
    return harness


def chat(text: str = "Where is my parcel?", **changes: Any) -> ChatRequest:
    base = ChatRequest(
        stage="intent",
        messages=[
            {"role": "system", "content": "Classify the customer's message."},
            {"role": "user", "content": text},
        ],
        schema_name="intent",
        json_schema=SCHEMA,
        max_tokens=60,
        customer_id="cust-1",
    )
    return replace(base, **changes)


async def spend_window(sim: RunningSimulator, deployment: str, tokens: int) -> None:
    """A noisy neighbour: spend ``tokens`` of the deployment's window behind our back."""
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_key=KEY, api_version=API_VERSION, max_retries=0
    ) as neighbour:
        await neighbour.chat.completions.create(
            model=deployment,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=tokens - 8,  # 8 = the prompt's own estimate
        )


# -- clients -------------------------------------------------------------------------------


async def test_the_azure_client_built_from_settings_returns_schema_valid_json(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        AZURE_OPENAI_ENDPOINT=simulator.base_url,
        LLM_DEPLOYMENT="primary",
        LLM_DEPLOYMENT_TPM="primary=600000",
        LLM_PRICES="primary=0.15/0.60",
    )
    model = build_chat_model(settings)
    try:
        result = await model.complete(chat())
    finally:
        await model.close()
    parsed = json.loads(result.content)
    assert set(parsed) == {"intent", "confidence"}
    assert result.deployment == "primary"
    assert result.prompt_tokens > 0
    assert result.completion_tokens > 0
    assert result.cost_usd == pytest.approx(
        (result.prompt_tokens * 0.15 + result.completion_tokens * 0.60) / 1e6
    )


async def test_an_openai_compatible_base_url_works_the_same(simulator: RunningSimulator) -> None:
    settings = llm_settings(simulator, endpoint=None, base_url=simulator.base_url + "/v1")
    model = GuardedChatModel(OpenAIChatEndpoint(settings), settings=settings)
    try:
        result = await model.complete(chat())
    finally:
        await model.close()
    assert json.loads(result.content)["intent"]


# -- 429s ----------------------------------------------------------------------------------


async def test_a_429_is_retried_after_its_retry_after_ms(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", "429")
    h.wire.rewrite = {"retry-after-ms": "1500", "retry-after": "1"}
    started = time.monotonic()
    result = await h.model.complete(chat())
    assert time.monotonic() - started >= 1.5  # the milliseconds header wins over the seconds
    assert result.deployment in ("primary", "fallback")
    assert h.wire.statuses[("primary", 429)] == 1
    assert h.metrics.throttles["primary"] == 1


async def test_a_429_with_only_retry_after_is_retried_after_those_seconds(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(simulator, deployments={s: ("primary",) for s in Stage})
    h = guarded(simulator, harnesses, settings)
    h.wire.fail("primary", "429")
    h.wire.rewrite = {"retry-after-ms": None, "retry-after": "2"}
    started = time.monotonic()
    await h.model.complete(chat())
    assert time.monotonic() - started >= 2.0
    assert h.wire.calls("primary") == 2


async def test_a_real_quota_429_longer_than_the_wait_budget_becomes_retry_later(
    still_simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    # The limiter does not know this deployment's quota: only the server's answer can tell.
    sim = still_simulator
    settings = llm_settings(
        sim, deployments={s: ("small",) for s in Stage}, deployment_tpm={}, wait_budget_s=2.0
    )
    h = guarded(sim, harnesses, settings)
    await spend_window(sim, "small", 1000)
    started = time.monotonic()
    with pytest.raises(RetryLater) as caught:
        await h.model.complete(chat())
    elapsed = time.monotonic() - started
    assert elapsed < settings.wait_budget_s  # nothing slept under the message lock
    # The 429 said "retry after 10 s"; the delay counts from the answer, rounded up to 0.1 s.
    assert QUOTA_WINDOW_S - elapsed <= caught.value.delay_s <= QUOTA_WINDOW_S
    assert h.wire.statuses[("small", 429)] == 1


async def test_a_known_quota_that_is_booked_becomes_retry_later_without_a_call(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(
        simulator,
        deployments={s: ("small",) for s in Stage},
        deployment_tpm={"small": 6_000},
        wait_budget_s=2.0,
    )
    h = guarded(simulator, harnesses, settings)
    await h.model.complete(chat(max_tokens=800))
    with pytest.raises(RetryLater) as caught:
        await h.model.complete(chat("another one", max_tokens=800))
    assert caught.value.delay_s > 2.0
    assert h.wire.calls("small") == 1  # the second call never left


async def test_remaining_token_headers_reveal_a_neighbour_and_prevent_the_429(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(
        simulator,
        deployments={s: ("small",) for s in Stage},
        deployment_tpm={"small": 6_000},
        wait_budget_s=2.0,
    )
    h = guarded(simulator, harnesses, settings)
    await spend_window(simulator, "small", 600)
    await asyncio.sleep(1.1)  # the neighbour's request leaves the 1 s window; its tokens stay
    await h.model.complete(chat(max_tokens=100))  # learns from the headers: ~250 left
    with pytest.raises(RetryLater):
        await h.model.complete(chat("another one", max_tokens=300))
    assert h.wire.statuses[("small", 429)] == 0


# -- failures, breaker, fallback -----------------------------------------------------------


async def test_a_server_error_is_retried_on_the_fallback(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", "503")
    result = await h.model.complete(chat())
    assert result.deployment == "fallback"
    assert h.wire.statuses[("primary", 503)] == 1
    assert h.metrics.fallbacks[("primary", "fallback")] == 1


async def test_server_errors_everywhere_end_in_a_transient_error(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    h = guarded(simulator, harnesses, llm_settings(simulator, breaker_failures=100))
    h.wire.fail("primary", "500", times=5)
    h.wire.fail("fallback", "502", times=5)
    with pytest.raises(TransientError) as caught:
        await h.model.complete(chat())
    assert not isinstance(caught.value, RetryLater)
    assert h.wire.calls("primary") + h.wire.calls("fallback") == 3


async def test_a_malformed_model_answer_is_handed_over_once_and_never_cached(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    # Broken JSON from the model is the agents' to repair, not a transport failure to retry.
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", "malformed")
    broken = await h.model.complete(chat())
    with pytest.raises(ValueError):
        json.loads(broken.content)
    assert h.wire.calls("primary") == 1
    again = await h.model.complete(chat())
    assert not again.cached
    assert json.loads(again.content)["intent"]


async def test_an_unknown_deployment_is_a_permanent_error_named_by_its_status(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(simulator, deployments={s: ("no-such-model",) for s in Stage})
    h = guarded(simulator, harnesses, settings)
    with pytest.raises(PermanentError) as caught:
        await h.model.complete(chat())
    assert "HTTP 404" in caught.value.description
    assert h.wire.calls("no-such-model") == 1


async def test_a_timeout_is_cut_short_and_retried(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(simulator, timeout_s=0.5, deployments={s: ("primary",) for s in Stage})
    h = guarded(simulator, harnesses, settings)
    h.wire.fail("primary", "timeout")
    started = time.monotonic()
    result = await h.model.complete(chat())
    assert time.monotonic() - started < 2.5  # the simulator would have hung for 3 s
    assert result.deployment == "primary"
    assert h.metrics.calls[("primary", "timeout")] == 1


async def test_the_breaker_opens_sends_calls_to_the_fallback_and_closes_after_a_probe(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", "500", times=2)
    for text in ("one", "two"):
        assert (await h.model.complete(chat(text))).deployment == "fallback"
    assert ("primary", "open") in h.metrics.breaker_states
    assert (await h.model.complete(chat("three"))).deployment == "fallback"
    assert h.wire.calls("primary") == 2  # the open circuit kept the third call away
    await asyncio.sleep(0.6)
    assert (await h.model.complete(chat("four"))).deployment == "primary"
    assert h.metrics.breaker_states[-2:] == [("primary", "half_open"), ("primary", "closed")]


async def test_the_fallback_serves_when_the_primarys_quota_is_booked(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    settings = llm_settings(
        simulator,
        deployments={s: ("small", "fallback") for s in Stage},
        deployment_tpm={"small": 6_000, "fallback": 600_000},
        wait_budget_s=2.0,
    )
    h = guarded(simulator, harnesses, settings)
    first = await h.model.complete(chat(max_tokens=800))
    second = await h.model.complete(chat("another one", max_tokens=800))
    assert (first.deployment, second.deployment) == ("small", "fallback")


# -- cache and content filter ---------------------------------------------------------------


async def test_an_identical_deterministic_request_is_served_from_the_cache(
    simulator: RunningSimulator, harnesses: list[Harness]
) -> None:
    h = guarded(simulator, harnesses)
    first = await h.model.complete(chat())
    second = await h.model.complete(chat())
    assert second.cached
    assert second.content == first.content
    assert h.wire.calls("primary") == 1
    assert (h.metrics.cache_hits, h.metrics.cache_misses) == (1, 1)


@pytest.mark.parametrize("fault", ["content_filter", "content_filter_completion"])
async def test_content_filtering_is_final_and_never_retried(
    simulator: RunningSimulator, harnesses: list[Harness], fault: str
) -> None:
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", fault)
    with pytest.raises(ContentFiltered):
        await h.model.complete(chat())
    assert h.wire.calls("primary") + h.wire.calls("fallback") == 1


# -- through the pipeline: reschedule and dead-letter ----------------------------------------


def _pipeline_settings(sim: RunningSimulator, tmp_path: Path, **extra: str) -> Settings:
    return make_settings(
        tmp_path,
        AZURE_OPENAI_ENDPOINT=sim.base_url,
        LLM_DEPLOYMENT="small",
        LLM_WAIT_BUDGET_S="2",
        LLM_CACHE_ENABLED="false",
        **extra,
    )


async def _first_intent_message(
    settings: Settings, sim: RunningSimulator, broker: Broker
) -> ReceivedMessage:
    """Ingest one request through the broker, fill the deployment's window, and take the
    intent message off the queue as the Functions host would (under a lock)."""
    bootstrap.configure(
        settings=settings, publisher=BrokerPublisher(broker), llm=build_chat_model(settings)
    )
    body = json.dumps(
        {"customerId": "cust-1", "text": "Refund order A-1 please", "channel": "email"}
    ).encode()
    await app_functions()["ingest"]([hub_event(body, sequence=1)])
    await spend_window(sim, "small", 1000)  # the deployment is busy for the next 10 s
    (first,) = broker.receive(settings.queues.intent)
    return first


async def test_a_quota_wait_past_the_budget_becomes_a_scheduled_message(
    still_simulator: RunningSimulator, tmp_path: Path
) -> None:
    settings = _pipeline_settings(still_simulator, tmp_path)
    with pipeline_broker(tmp_path / "b.db", settings) as broker:
        try:
            first = await _first_intent_message(settings, still_simulator, broker)
            started = time.monotonic()
            await app_functions()["intent_agent"](service_bus_message(first))
            elapsed = time.monotonic() - started
        finally:
            await bootstrap.shutdown()
        (again,) = [
            m
            for m in broker.peek(settings.queues.intent, limit=10)
            if m.message_id != first.message_id
        ]
        assert broker.queue_stats()[settings.queues.intent].scheduled == 1
    env = Envelope.from_bytes(again.body)
    assert env.attempt == 1
    assert elapsed < settings.llm.wait_budget_s  # rescheduled, not slept under the lock
    assert again.scheduled_enqueue_time is not None
    delay = again.scheduled_enqueue_time - env.sent_at.timestamp()
    # The simulator's own retry-after (exactly the window, counted from its answer), stretched
    # by the re-send jitter; 1 ms for the epoch-seconds round trip through the broker.
    assert QUOTA_WINDOW_S - elapsed - 0.001 <= delay
    assert delay <= QUOTA_WINDOW_S * (1.0 + RESCHEDULE_JITTER) + 0.001
    assert env.waited_s == pytest.approx(delay, abs=0.002)  # the budget spent so far


async def test_a_message_past_its_total_budget_is_dead_lettered_with_the_reason(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    settings = _pipeline_settings(simulator, tmp_path, LLM_TOTAL_BUDGET_S="60")
    with pipeline_broker(tmp_path / "b.db", settings) as broker:
        try:
            first = await _first_intent_message(settings, simulator, broker)
            env = Envelope.from_bytes(first.body)
            # Four reschedules have given it 55 s of its 60 s budget; the window needs more.
            old = env.model_copy(update={"waited_s": 55.0, "attempt": 4})
            stale = replace(first, body=old.to_bytes())
            await app_functions()["intent_agent"](service_bus_message(stale))
        finally:
            await bootstrap.shutdown()
        (parked,) = broker.peek(settings.queues.deadletter, limit=10)
        # Nothing was rescheduled: the intent queue holds only the message under our lock.
        assert [m.message_id for m in broker.peek(settings.queues.intent, limit=10)] == [
            first.message_id
        ]
    assert parked.application_properties["DeadLetterReason"] == "BudgetExceeded"
    description = str(parked.application_properties["DeadLetterErrorDescription"])
    assert "budget" in description
    assert Envelope.from_bytes(parked.body).conversation_id == env.conversation_id


async def test_an_unreadable_http_answer_is_a_malformed_reply_and_is_retried() -> None:
    """A proxy answering 200 with garbage: not the simulator, a tiny aiohttp server."""
    from aiohttp import web

    answers = deque([web.Response(text="<html>gateway</html>", content_type="application/json")])

    async def handler(request: web.Request) -> web.Response:
        if answers:
            return answers.popleft()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": '{"intent": "other"}'},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )

    app = web.Application()
    app.router.add_post("/openai/deployments/{d}/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = LLMSettings(
        endpoint=f"http://127.0.0.1:{port}",
        api_key=Secret(KEY),
        deployments={s: ("primary",) for s in Stage},
    )
    metrics = CountingMetrics()
    model = GuardedChatModel(OpenAIChatEndpoint(settings), settings=settings, metrics=metrics)
    try:
        result = await model.complete(chat())
    finally:
        await model.close()
        await runner.cleanup()
    assert json.loads(result.content) == {"intent": "other"}
    assert metrics.calls[("primary", "malformed")] == 1
    assert metrics.calls[("primary", "ok")] == 1
