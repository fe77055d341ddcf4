"""Every HTTP attempt of a model call is a GenAI client span under its stage span.

The production path over real HTTP: ``GuardedChatModel`` over ``OpenAIChatEndpoint`` (the openai
SDK) against the Azure OpenAI simulator, faults injected per request with its ``x-sim-fault``
header. Attribute names follow the OpenTelemetry semantic conventions for GenAI client spans
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/: ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``) and for HTTP
(https://opentelemetry.io/docs/specs/semconv/http/http-spans/: ``http.response.status_code``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from devhost.simulator import RunningSimulator, start_simulator
from shared.config import Settings
from shared.errors import TransientError
from shared.telemetry import configure_telemetry, shutdown_telemetry, stage_span
from tests.integration.test_llm_simulator import (
    Harness,
    chat,
    guarded,
    llm_settings,
    simulator_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(simulator_config())
    yield sim
    await sim.stop()


@pytest.fixture
async def harnesses() -> AsyncIterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        await harness.close()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_telemetry(Settings(), span_exporter=exporter)
    yield exporter
    shutdown_telemetry()


def _model_calls(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    calls = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    return sorted(calls, key=lambda s: s.start_time or 0)


def _stage(exporter: InMemorySpanExporter) -> ReadableSpan:
    (stage,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    return stage


async def test_a_429_and_a_503_then_an_answer_are_three_spans_under_the_stage(
    simulator: RunningSimulator, harnesses: list[Harness], spans: InMemorySpanExporter
) -> None:
    h = guarded(simulator, harnesses)
    h.wire.fail("primary", "429")
    h.wire.rewrite = {"retry-after-ms": "10"}
    h.wire.fail("primary", "503")

    with stage_span("intent agent", traceparent=None, conversation_id="c-1", stage="intent"):
        result = await h.model.complete(chat())

    stage = _stage(spans)
    calls = _model_calls(spans)
    assert [c.attributes["switchboard.llm.attempt"] for c in calls] == [1, 2, 3]
    assert [c.attributes["http.response.status_code"] for c in calls] == [429, 503, 200]
    assert [c.attributes["switchboard.llm.outcome"] for c in calls] == [
        "throttled",
        "server_error",
        "ok",
    ]
    assert all(c.parent is not None and c.parent.span_id == stage.context.span_id for c in calls)
    assert all(c.attributes["switchboard.stage"] == "intent" for c in calls)
    assert [c.status.status_code for c in calls[:2]] == [StatusCode.ERROR, StatusCode.ERROR]
    assert calls[0].attributes["switchboard.llm.retry_after_s"] == pytest.approx(0.01)
    # After the 503 the next attempt goes to the fallback deployment.
    answered = calls[2]
    assert answered.attributes["gen_ai.request.model"] == result.deployment == "fallback"
    assert answered.attributes["gen_ai.usage.input_tokens"] == result.prompt_tokens
    assert answered.attributes["gen_ai.usage.output_tokens"] == result.completion_tokens
    assert answered.attributes["switchboard.cost_usd"] == pytest.approx(result.cost_usd)
    assert answered.attributes["gen_ai.system"] == "az.ai.openai"
    # Every attempt says how long it waited for quota; the first found its slot free.
    assert calls[0].attributes["switchboard.llm.quota_wait_s"] == 0.0
    assert all(isinstance(c.attributes["switchboard.llm.quota_wait_s"], float) for c in calls)
    assert "gen_ai.usage.input_tokens" not in calls[0].attributes


async def test_a_call_that_fails_for_good_leaves_one_failed_span_per_attempt(
    simulator: RunningSimulator, harnesses: list[Harness], spans: InMemorySpanExporter
) -> None:
    h = guarded(simulator, harnesses, llm_settings(simulator, breaker_failures=100))
    h.wire.fail("primary", "500", times=5)
    h.wire.fail("fallback", "502", times=5)

    with (
        stage_span("response agent", traceparent=None, conversation_id="c-2", stage="response"),
        pytest.raises(TransientError),
    ):
        await h.model.complete(chat(stage="response"))

    calls = _model_calls(spans)
    assert len(calls) == h.wire.calls("primary") + h.wire.calls("fallback") == 3
    assert [c.attributes["switchboard.llm.attempt"] for c in calls] == [1, 2, 3]
    assert {c.attributes["http.response.status_code"] for c in calls} == {500, 502}
    assert all(c.attributes["error.type"] == "EndpointServerError" for c in calls)
    assert all(c.attributes["switchboard.stage"] == "response" for c in calls)


async def test_an_openai_compatible_endpoint_names_its_system_openai(
    simulator: RunningSimulator, spans: InMemorySpanExporter
) -> None:
    from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
    from shared.llm.guarded import GuardedChatModel

    settings = llm_settings(simulator, endpoint=None, base_url=simulator.base_url + "/v1")
    model = GuardedChatModel(OpenAIChatEndpoint(settings), settings=settings)
    try:
        await model.complete(chat())
    finally:
        await model.close()

    (call,) = _model_calls(spans)
    assert call.attributes["gen_ai.system"] == "openai"
    assert call.attributes["switchboard.stage"] == "intent"
    assert call.attributes["http.response.status_code"] == 200
