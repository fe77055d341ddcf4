"""The waterfall over spans the app's own tracing made, sent through the OTLP encoding devhost
receives: stages read as a sequence, each model call (every attempt) one level under its stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.dashboard import waterfall
from devhost.dashboard.spans import CollectedSpan, SpanStore
from shared.config import Settings
from shared.telemetry import (
    configure_telemetry,
    current_traceparent,
    llm_span,
    shutdown_telemetry,
    stage_span,
)
from tests.unit.test_dashboard import OtlpRoundTrip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SpanStore]:
    spans = SpanStore(tmp_path / "spans.sqlite3")
    configure_telemetry(Settings(), span_exporter=OtlpRoundTrip(spans))
    yield spans
    shutdown_telemetry()
    spans.close()


def _call(
    deployment: str, stage: str, *, attempt: int, status: int, tokens: tuple[int, int] = (0, 0)
) -> None:
    with llm_span(deployment=deployment, stage=stage) as span:
        span.attempt(attempt, quota_wait_s=0.5 if attempt > 1 else 0.0)
        if status == 200:
            span.answered("ok", status=200, retry_after_s=None)
            span.record(tokens[0], tokens[1], cost_usd=(tokens[0] + tokens[1]) / 1e6)
        else:
            span.answered("throttled", status=status, retry_after_s=0.5)


def _conversation(store: SpanStore) -> list[CollectedSpan]:
    with stage_span("intent agent", traceparent=None, conversation_id="c-1", stage="intent"):
        _call("mini", "intent", attempt=1, status=429)
        _call("mini", "intent", attempt=2, status=200, tokens=(300, 20))
        hop = current_traceparent()
    with stage_span("response agent", traceparent=hop, conversation_id="c-1", stage="response"):
        _call("large", "response", attempt=1, status=200, tokens=(200, 80))
    shutdown_telemetry()  # flushes
    (trace_id,) = {s.trace_id for s in store._select("1 = 1", ())}
    return store.for_trace(trace_id)


def test_model_calls_sit_under_their_stage_in_order(store: SpanStore) -> None:
    fall = waterfall.from_spans(_conversation(store))

    rows = [(bar.kind, bar.stage, bar.depth) for bar in fall.bars]
    assert rows == [
        ("stage", "intent", 0),
        ("llm", "intent", 1),
        ("llm", "intent", 1),
        ("stage", "response", 0),
        ("llm", "response", 1),
    ]


def test_each_attempt_shows_its_status_retry_wait_tokens_and_cost(store: SpanStore) -> None:
    intent, throttled, answered, response, _ = waterfall.from_spans(_conversation(store)).bars

    assert "HTTP 429" in throttled.note
    assert "attempt 2" in answered.note
    assert "waited 0.50s for quota" in answered.note
    details = dict(answered.details)
    assert details["prompt tokens"] == "300"
    assert details["completion tokens"] == "20"
    assert details["deployment"] == "mini"
    assert dict(throttled.details)["HTTP"] == "429"
    assert dict(intent.details)["model calls"] == "2 model calls (1 retried), 320 tokens, $0.0003"
    assert dict(response.details)["model calls"] == "1 model call, 280 tokens, $0.0003"
