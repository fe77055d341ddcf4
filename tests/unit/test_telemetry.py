"""Tracing across hops, GenAI spans, metrics, log correlation and redaction before export."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared.config import Settings
from shared.errors import ConfigError
from shared.telemetry import (
    LOG_FORMAT,
    CorrelationFilter,
    LLMTelemetry,
    Metrics,
    configure_telemetry,
    correlation_id,
    current_traceparent,
    install_log_filters,
    llm_span,
    metrics,
    new_traceparent,
    shutdown_telemetry,
    stage_span,
    trace_id_of,
)
from shared.telemetry.redaction import CARD, EMAIL, PHONE, RedactingFilter

CARD_NUMBER = "4111 1111 1111 1111"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
        """Every data point by (metric name, attributes): a number, or a histogram point."""
        data = self.reader.get_metrics_data()
        found: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset((point.attributes or {}).items()))
                        found[key] = point if isinstance(point, HistogramDataPoint) else point.value
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    configure_telemetry(Settings(), span_exporter=spans, metric_reader=reader)
    yield Telemetry(spans, reader)
    shutdown_telemetry()


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """A handler on a private logger, given the filters the way configure_telemetry does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    install_log_filters(handler)
    log = logging.getLogger("tests.telemetry.buffered")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    yield stream
    log.removeHandler(handler)
    log.propagate = True
    log.setLevel(logging.NOTSET)
    handler.close()


def attrs(*pairs: tuple[str, Any]) -> frozenset[tuple[str, Any]]:
    return frozenset(pairs)


# ------------------------------------------------------------------------------ tracing


def test_a_trace_continues_across_three_hops_with_one_trace_id_and_parent_links(
    telemetry: Telemetry,
) -> None:
    traceparent = None
    for stage in ("intent", "response", "critic"):
        with stage_span(
            f"{stage} agent", traceparent=traceparent, conversation_id="c-1", stage=stage
        ):
            traceparent = current_traceparent()

    first, second, third = telemetry.finished()
    assert first.context.trace_id == second.context.trace_id == third.context.trace_id
    assert first.parent is None
    assert second.parent.span_id == first.context.span_id
    assert third.parent.span_id == second.context.span_id
    assert second.parent.is_remote
    assert third.parent.is_remote
    assert all(span.kind is SpanKind.CONSUMER for span in (first, second, third))
    assert third.attributes["switchboard.stage"] == "critic"
    assert third.attributes["switchboard.conversation_id"] == "c-1"
    assert trace_id_of(traceparent or "") == format(first.context.trace_id, "032x")


def test_a_producer_traceparent_is_the_remote_parent_of_the_first_stage(
    telemetry: Telemetry,
) -> None:
    producer = new_traceparent()

    with stage_span("ingest", traceparent=producer, conversation_id="c-2", stage="ingest"):
        pass

    (span,) = telemetry.finished()
    assert format(span.context.trace_id, "032x") == trace_id_of(producer)
    assert format(span.parent.span_id, "016x") == producer.split("-")[2]


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    ],
)
def test_a_missing_or_malformed_traceparent_starts_a_fresh_trace(
    telemetry: Telemetry, traceparent: str | None
) -> None:
    # Even inside another trace, a message without a usable traceparent starts its own.
    with (
        stage_span("outer", traceparent=new_traceparent(), conversation_id="c", stage="x"),
        stage_span("inner", traceparent=traceparent, conversation_id="c", stage="y"),
    ):
        pass

    inner, outer = telemetry.finished()
    assert inner.parent is None
    assert inner.context.is_valid
    assert inner.context.trace_id != outer.context.trace_id


@pytest.mark.parametrize(
    "traceparent", ["", "00-abc-def-01", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "x" * 55]
)
def test_trace_id_of_rejects_a_malformed_traceparent(traceparent: str) -> None:
    with pytest.raises(ValueError, match="malformed traceparent"):
        trace_id_of(traceparent)


def test_new_traceparents_are_distinct_and_well_formed() -> None:
    first, second = new_traceparent(), new_traceparent()

    assert first != second
    assert len(trace_id_of(first)) == 32
    assert first.startswith("00-")
    assert first.endswith("-01")


def test_without_configuration_trace_ids_still_flow_but_nothing_is_exported() -> None:
    spans = InMemorySpanExporter()
    configure_telemetry(Settings(), span_exporter=spans)
    shutdown_telemetry()

    with stage_span("intent agent", traceparent=None, conversation_id="c", stage="intent"):
        first = current_traceparent()
    with stage_span("response agent", traceparent=first, conversation_id="c", stage="response"):
        second = current_traceparent()
    metrics.throttled("unconfigured")

    assert first is not None
    assert second is not None
    assert trace_id_of(first) == trace_id_of(second)
    assert first != second
    assert spans.get_finished_spans() == ()


def test_there_is_no_traceparent_outside_a_span(telemetry: Telemetry) -> None:
    assert current_traceparent() is None


def test_an_exception_in_a_stage_is_recorded_redacted_and_propagated(
    telemetry: Telemetry,
) -> None:
    with (
        pytest.raises(RuntimeError),
        stage_span("response agent", traceparent=None, conversation_id="c-3", stage="response"),
    ):
        raise RuntimeError(f"card {CARD_NUMBER} refused for jane@example.com")

    (span,) = telemetry.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"RuntimeError: card {CARD} refused for {EMAIL}"
    assert span.attributes["error.type"] == "RuntimeError"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == f"card {CARD} refused for {EMAIL}"
    assert "jane@example.com" not in event.attributes["exception.stacktrace"]
    assert CARD_NUMBER not in event.attributes["exception.stacktrace"]


def test_span_names_attributes_and_events_with_pii_are_redacted_before_export(
    telemetry: Telemetry,
) -> None:
    with stage_span(
        "intent for bob@example.com",
        traceparent=None,
        conversation_id="c-4",
        stage="intent",
        attributes={"customer.text": "call me on +44 20 7946 0958", "order": "ORD-2024-0042"},
    ) as span:
        span.set_attribute("notes", ["mail a@b.io", "fine"])
        span.add_event("parsed", {"card": CARD_NUMBER, "count": 3})

    (exported,) = telemetry.finished()
    assert exported.name == f"intent for {EMAIL}"
    assert exported.attributes["customer.text"] == f"call me on {PHONE}"
    assert exported.attributes["order"] == "ORD-2024-0042"
    assert exported.attributes["switchboard.conversation_id"] == "c-4"
    assert tuple(exported.attributes["notes"]) == (f"mail {EMAIL}", "fine")
    assert dict(exported.events[0].attributes) == {"card": CARD, "count": 3}


# ------------------------------------------------------------------------------ GenAI


def test_a_genai_span_records_model_tokens_cost_and_finish_reason(telemetry: Telemetry) -> None:
    with (
        stage_span("intent agent", traceparent=None, conversation_id="c-5", stage="intent"),
        llm_span(deployment="gpt-4o-mini", stage="intent") as call,
    ):
        call.record(120, 30, 0.00042, False, "stop", response_model="gpt-4o-mini-2024-07-18")

    llm, stage = telemetry.finished()
    assert llm.name == "chat gpt-4o-mini"
    assert llm.kind is SpanKind.CLIENT
    assert llm.parent.span_id == stage.context.span_id
    assert dict(llm.attributes) == {
        "gen_ai.system": "az.ai.openai",
        "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "switchboard.stage": "intent",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "switchboard.cost_usd": 0.00042,
        "switchboard.llm.cached": False,
        "gen_ai.response.finish_reasons": ("stop",),
    }


def test_a_genai_span_drops_impossible_usage_instead_of_failing_the_call(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    with llm_span(deployment="d", stage="critic", system="openai") as call:
        call.record(-1, 5, float("nan"), True)
        call.retry("throttled", 1.5)

    (span,) = telemetry.finished()
    assert "gen_ai.usage.input_tokens" not in span.attributes
    assert "switchboard.cost_usd" not in span.attributes
    assert span.attributes["gen_ai.usage.output_tokens"] == 5
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.events[0].attributes["delay_s"] == 1.5
    assert "dropping prompt_tokens" in caplog.text


# ------------------------------------------------------------------------------- logs


def test_logs_in_a_stage_carry_the_conversation_and_trace_ids_and_are_redacted(
    telemetry: Telemetry, log_buffer: io.StringIO
) -> None:
    log = logging.getLogger("tests.telemetry.buffered")
    with stage_span("intent agent", traceparent=None, conversation_id="c-6", stage="intent"):
        log.info("reply to %s", "sam@example.com")
        trace_id = format(telemetry_span_trace_id(), "032x")
    log.info("after the stage")

    inside, after = log_buffer.getvalue().splitlines()
    assert inside.endswith(f"[cid=c-6 trace={trace_id}] reply to {EMAIL}")
    assert after.endswith("[cid=- trace=-] after the stage")
    assert correlation_id() is None


def telemetry_span_trace_id() -> int:
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().trace_id


def test_configuring_installs_the_filters_on_the_root_loggers_handlers(
    telemetry: Telemetry,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        # Already configured: a plain call is a no-op apart from filtering new handlers.
        configure_telemetry(Settings(telemetry_exporter="console"))
        logging.getLogger("tests.telemetry.root").warning("card %s", CARD_NUMBER)
    finally:
        root.removeHandler(handler)
        handler.close()

    kinds = {type(f) for f in handler.filters}
    assert {CorrelationFilter, RedactingFilter} <= kinds
    assert logging.lastResort is not None
    assert RedactingFilter in {type(f) for f in logging.lastResort.filters}
    assert stream.getvalue() == f"card {CARD}\n"
    with stage_span("x", traceparent=None, conversation_id="c", stage="s"):
        pass
    assert len(telemetry.finished()) == 1, "the injected exporter must still be in place"


# ----------------------------------------------------------------------------- metrics


def test_metrics_have_the_expected_names_attributes_and_values(telemetry: Telemetry) -> None:
    metrics.stage_completed("intent", "forwarded", 0.25)
    metrics.stage_completed("intent", "forwarded", 0.75)
    metrics.stage_completed("critic", "approved", -0.1)
    metrics.deadlettered("intent", "InvalidInput")
    metrics.tokens("response", "gpt-4o", 300, 120, 0.0042)
    metrics.throttled("gpt-4o")
    metrics.throttled("gpt-4o")
    metrics.cache(True, "gpt-4o")
    metrics.cache(False, "gpt-4o")
    metrics.breaker_state("gpt-4o", "open")

    points = telemetry.points()

    stage = ("switchboard.stage", "intent")
    forwarded = ("switchboard.outcome", "forwarded")
    latency = points[("switchboard.stage.duration", attrs(stage, forwarded))]
    assert (latency.count, latency.sum) == (2, 1.0)
    critic = attrs(("switchboard.stage", "critic"), ("switchboard.outcome", "approved"))
    assert points[("switchboard.stage.duration", critic)].sum == 0.0
    assert points[("switchboard.stage.completed", attrs(stage, forwarded))] == 2
    assert (
        points[
            (
                "switchboard.messages.deadlettered",
                attrs(("messaging.destination.name", "intent"), ("error.type", "InvalidInput")),
            )
        ]
        == 1
    )
    model = ("gen_ai.request.model", "gpt-4o")
    response = ("switchboard.stage", "response")
    tokens = "switchboard.llm.tokens"
    assert points[(tokens, attrs(response, model, ("gen_ai.token.type", "input")))] == 300
    assert points[(tokens, attrs(response, model, ("gen_ai.token.type", "output")))] == 120
    assert points[("switchboard.llm.cost", attrs(response, model))] == pytest.approx(0.0042)
    assert points[("switchboard.llm.throttled", attrs(model))] == 2
    assert points[("switchboard.llm.cache", attrs(model, ("switchboard.cache.result", "hit")))] == 1
    assert points[("switchboard.llm.breaker.state", attrs(model))] == 2


def test_backlog_and_instance_gauges_report_what_their_callbacks_return(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    own = Metrics()
    backlog = {"intent": 12, "response": 0}

    def broken() -> dict[str, int]:
        raise ConnectionError("broker unreachable")

    own.observe_backlog(lambda: backlog)
    own.observe_backlog(broken)
    own.observe_instances(lambda: {"intent_agent": 3})

    points = telemetry.points()
    backlog["intent"] = 5
    later = telemetry.points()

    queue = "messaging.destination.name"
    assert points[("switchboard.queue.backlog", attrs((queue, "intent")))] == 12
    assert points[("switchboard.queue.backlog", attrs((queue, "response")))] == 0
    assert points[("switchboard.function.instances", attrs(("faas.name", "intent_agent")))] == 3
    assert later[("switchboard.queue.backlog", attrs((queue, "intent")))] == 5
    assert "callback failed" in caplog.text


def test_llm_layer_callbacks_land_on_per_call_instruments(telemetry: Telemetry) -> None:
    adapter = LLMTelemetry()

    adapter.tokens(stage="intent", deployment="mini", prompt=80, completion=20)
    adapter.call(stage="intent", deployment="mini", outcome="throttled", latency_s=0.3)
    adapter.throttled(deployment="mini", retry_after_s=2.0)
    adapter.cache(stage="intent", hit=False)
    adapter.fallback(stage="intent", primary="mini", used="big")
    adapter.breaker(deployment="mini", state="half_open")

    points = telemetry.points()
    base = (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "mini"))
    stage = ("switchboard.stage", "intent")
    usage = points[
        ("gen_ai.client.token.usage", attrs(*base, stage, ("gen_ai.token.type", "input")))
    ]
    assert usage.sum == 80
    duration = points[
        (
            "gen_ai.client.operation.duration",
            attrs(*base, stage, ("switchboard.outcome", "throttled"), ("error.type", "throttled")),
        )
    ]
    assert duration.count == 1
    assert points[("switchboard.llm.throttled", attrs(base[1]))] == 1
    assert (
        points[("switchboard.llm.cache", attrs(stage, ("switchboard.cache.result", "miss")))] == 1
    )
    fallback = attrs(stage, base[1], ("switchboard.llm.used", "big"))
    assert points[("switchboard.llm.fallback", fallback)] == 1
    assert points[("switchboard.llm.breaker.state", attrs(base[1]))] == 1


def test_reconfiguring_moves_instruments_to_the_new_reader(telemetry: Telemetry) -> None:
    metrics.throttled("d")
    assert (
        telemetry.points()[("switchboard.llm.throttled", attrs(("gen_ai.request.model", "d")))] == 1
    )

    fresh = InMemoryMetricReader()
    configure_telemetry(Settings(), span_exporter=telemetry.spans, metric_reader=fresh)
    metrics.throttled("d")

    data = Telemetry(telemetry.spans, fresh).points()
    assert data[("switchboard.llm.throttled", attrs(("gen_ai.request.model", "d")))] == 1


# ------------------------------------------------------------------------ real exporters


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint on loopback that keeps what it is sent."""

    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_the_otlp_exporter_sends_redacted_spans_and_metrics_to_a_collector(
    collector: ThreadingHTTPServer,
) -> None:
    host, port = collector.server_address[:2]
    settings = Settings(
        telemetry_exporter="otlp", otlp_endpoint=f"http://{host}:{port}/", service_name="sb-test"
    )
    configure_telemetry(settings)
    try:
        with stage_span(
            "intent agent",
            traceparent=None,
            conversation_id="c-7",
            stage="intent",
            attributes={"customer.text": "I am jo@example.com, card " + CARD_NUMBER},
        ):
            metrics.stage_completed("intent", "forwarded", 0.5)
    finally:
        shutdown_telemetry()

    bodies = dict(collector.received)  # type: ignore[attr-defined]
    traces = ExportTraceServiceRequest.FromString(bodies["/v1/traces"])
    resource = traces.resource_spans[0].resource
    assert {"key": "service.name", "value": "sb-test"} in [
        {"key": a.key, "value": a.value.string_value} for a in resource.attributes
    ]
    span = traces.resource_spans[0].scope_spans[0].spans[0]
    values = {a.key: a.value.string_value for a in span.attributes}
    assert values["customer.text"] == f"I am {EMAIL}, card {CARD}"
    assert values["switchboard.conversation_id"] == "c-7"
    exported_metrics = ExportMetricsServiceRequest.FromString(bodies["/v1/metrics"])
    names = {
        m.name
        for rm in exported_metrics.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert "switchboard.stage.duration" in names


def test_the_console_exporter_prints_redacted_spans(capsys: pytest.CaptureFixture[str]) -> None:
    configure_telemetry(Settings(telemetry_exporter="console"))
    try:
        with stage_span(
            "escalation agent",
            traceparent=None,
            conversation_id="c-8",
            stage="escalation",
            attributes={"note": "phone 555-123-4567"},
        ):
            pass
    finally:
        shutdown_telemetry()

    printed = capsys.readouterr().out
    assert '"name": "escalation agent"' in printed
    assert f'"note": "phone {PHONE}"' in printed
    assert "555-123-4567" not in printed


def test_azure_monitor_uses_the_managed_identity_named_by_the_client_id() -> None:
    from azure.identity import ManagedIdentityCredential

    from shared.telemetry import _azure_monitor_credential, _azure_monitor_options

    settings = Settings(
        telemetry_exporter="azuremonitor",
        appinsights_connection_string="InstrumentationKey=00000000-0000-0000-0000-000000000000",
        managed_identity_client_id="11111111-2222-3333-4444-555555555555",
    )
    credential = _azure_monitor_credential(settings)
    try:
        assert isinstance(credential, ManagedIdentityCredential)
        options = _azure_monitor_options(settings, credential)
        assert options["credential"] is credential
    finally:
        credential.close()
    anonymous = Settings(telemetry_exporter="azuremonitor", appinsights_connection_string="x")
    assert _azure_monitor_credential(anonymous) is None
    assert "credential" not in _azure_monitor_options(anonymous, None)


def test_an_exporter_that_cannot_be_created_stops_start_up_naming_the_setting() -> None:
    settings = Settings(
        telemetry_exporter="azuremonitor", appinsights_connection_string="not-a-connection-string"
    )

    with pytest.raises(ConfigError, match="APPLICATIONINSIGHTS_CONNECTION_STRING"):
        configure_telemetry(settings)

    with stage_span("x", traceparent=None, conversation_id="c", stage="s"):
        assert current_traceparent() is not None, "tracing keeps working unconfigured"


def test_convention_attribute_names_are_the_opentelemetry_semantic_conventions() -> None:
    """The names and the GenAI provider values are checked against the
    ``opentelemetry-semantic-conventions`` package the SDK ships with (the generated form of
    https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ and its HTTP, error,
    messaging and FaaS registries), not against our own copy of them."""
    from opentelemetry.semconv._incubating.attributes import (
        faas_attributes,
        gen_ai_attributes,
        messaging_attributes,
    )
    from opentelemetry.semconv.attributes import error_attributes, http_attributes

    from shared.telemetry import attributes as ours

    pairs = [
        (ours.GEN_AI_SYSTEM, gen_ai_attributes.GEN_AI_SYSTEM),
        (ours.GEN_AI_PROVIDER, gen_ai_attributes.GEN_AI_PROVIDER_NAME),
        (ours.GEN_AI_OPERATION, gen_ai_attributes.GEN_AI_OPERATION_NAME),
        (ours.GEN_AI_REQUEST_MODEL, gen_ai_attributes.GEN_AI_REQUEST_MODEL),
        (ours.GEN_AI_RESPONSE_MODEL, gen_ai_attributes.GEN_AI_RESPONSE_MODEL),
        (ours.GEN_AI_INPUT_TOKENS, gen_ai_attributes.GEN_AI_USAGE_INPUT_TOKENS),
        (ours.GEN_AI_OUTPUT_TOKENS, gen_ai_attributes.GEN_AI_USAGE_OUTPUT_TOKENS),
        (ours.GEN_AI_FINISH_REASONS, gen_ai_attributes.GEN_AI_RESPONSE_FINISH_REASONS),
        (ours.GEN_AI_TOKEN_TYPE, gen_ai_attributes.GEN_AI_TOKEN_TYPE),
        (ours.HTTP_STATUS, http_attributes.HTTP_RESPONSE_STATUS_CODE),
        (ours.ERROR_TYPE, error_attributes.ERROR_TYPE),
        (ours.QUEUE, messaging_attributes.MESSAGING_DESTINATION_NAME),
        (ours.FUNCTION, faas_attributes.FAAS_NAME),
    ]
    assert [(name, theirs) for name, theirs in pairs if name != theirs] == []
    systems = {value.value for value in gen_ai_attributes.GenAiSystemValues}
    providers = {value.value for value in gen_ai_attributes.GenAiProviderNameValues}
    assert set(ours._PROVIDER_NAMES) <= systems
    assert set(ours._PROVIDER_NAMES.values()) <= providers
