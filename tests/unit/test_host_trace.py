"""One trace in Application Insights: messages carry ``Diagnostic-Id``, triggers continue the
host's trace (``context.trace_context``), and the worker's Azure Monitor distro is used, redacted.

Sources: Use OpenTelemetry with Azure Functions (learn.microsoft.com, azure-functions
``opentelemetry-howto``): host.json ``"telemetryMode": "OpenTelemetry"``, app setting
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` ("so that the Functions host allows the
Python worker process to stream OpenTelemetry logs directly"), and "the OperationId ... comes
directly from the traceparent value in the incoming request or message". The worker side:
azure-functions-python-worker ``otel.py`` (``initialize_azure_monitor`` calls the distro's
``configure_azure_monitor``) and ``dispatcher.py`` (``args['context'] = fi_context``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devhost.bindings import InvocationContext
from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import Envelope
from shared.telemetry import configure_telemetry, shutdown_telemetry
from tests.support.drive import app_functions, indexed, service_bus_message
from tests.support.fakes import RecordingPublisher, happy_model

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN = "00f067aa0ba902b7"
REQUEST = json.dumps({"customerId": "cust-1", "text": "Where is ORD-1?", "channel": "web"})


@pytest.fixture
def spans(settings: Settings) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    configure_telemetry(settings, span_exporter=exporter)
    return exporter


@pytest.fixture(autouse=True)
async def _close() -> object:
    yield
    await bootstrap.shutdown()
    shutdown_telemetry()


async def first_intent_message(settings: Settings, publisher: RecordingPublisher) -> Envelope:
    from tests.support.drive import hub_batch, stored_event

    producer = f"00-{TRACE}-{'1' * 16}-01"
    events = hub_batch([stored_event(REQUEST.encode(), properties={"traceparent": producer})])
    await app_functions()["ingest"](events)
    [sent] = publisher.on(settings.queues.intent)
    return Envelope.from_bytes(sent.body)


async def test_every_message_carries_diagnostic_id_as_well_as_traceparent(
    settings: Settings,
) -> None:
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    await first_intent_message(settings, publisher)
    [sent] = publisher.on(settings.queues.intent)
    props = sent.application_properties
    assert props["Diagnostic-Id"] == props["traceparent"]
    assert str(props["traceparent"]).split("-")[1] == TRACE


async def test_an_agent_s_stage_span_is_the_child_of_the_host_s_invocation_span(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    await first_intent_message(settings, publisher)
    [message] = publisher.on(settings.queues.intent)
    spans.clear()
    # The worker passes the host's context: on Azure the host continued the message's trace.
    intent = {f.get_function_name(): f.get_user_function() for f in indexed()}["intent_agent"]
    context = InvocationContext("intent_agent", f"00-{TRACE}-{HOST_SPAN}-01")
    await intent(msg=service_bus_message(message), context=context)
    [stage] = [s for s in spans.get_finished_spans() if s.name == "intent agent"]
    assert format(stage.context.trace_id, "032x") == TRACE
    assert stage.parent is not None
    assert format(stage.parent.span_id, "016x") == HOST_SPAN
    assert stage.links == ()


async def test_a_host_trace_of_another_trace_is_linked_not_adopted(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    """An Event Hubs batch's invocation has a trace of its own: each conversation keeps its
    producer's trace and links the host's span."""
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    from tests.support.drive import hub_batch, stored_event

    other = "0af7651916cd43dd8448eb211c80319c"
    events = hub_batch(
        [stored_event(REQUEST.encode(), properties={"traceparent": f"00-{TRACE}-{'1' * 16}-01"})]
    )
    ingest = {f.get_function_name(): f.get_user_function() for f in indexed()}["ingest"]
    await ingest(events=events, context=InvocationContext("ingest", f"00-{other}-{HOST_SPAN}-01"))
    [span] = [s for s in spans.get_finished_spans() if s.name == "ingest"]
    assert format(span.context.trace_id, "032x") == TRACE
    [link] = span.links
    assert format(link.context.trace_id, "032x") == other
    assert format(link.context.span_id, "016x") == HOST_SPAN


def test_host_json_sets_opentelemetry_mode_and_the_distro_ships() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    # "If you set telemetryMode to OpenTelemetry, the configuration in the
    # logging.applicationInsights section of host.json doesn't apply."
    assert "applicationInsights" not in host.get("logging", {})
    # The worker imports the distro from the app's packages: it ships.
    assert "azure-monitor-opentelemetry>=" in (ROOT / "requirements.in").read_text()


def test_the_app_setting_lets_the_python_worker_stream_through_the_distro() -> None:
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'" in bicep


# The Functions worker, as far as telemetry goes: it configures the distro before it loads the
# app. A subprocess, since OpenTelemetry's global providers can be set once per process.
WORKER = r"""
import json, logging, sys
from azure.monitor.opentelemetry import configure_azure_monitor
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

configure_azure_monitor(
    connection_string="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
    "IngestionEndpoint=http://127.0.0.1:9/",
    disable_offline_storage=True,
    sampling_ratio=1.0,  # deterministic here; the default rate-limits
)
provider = trace.get_tracer_provider()
# Another exporter on the distro's provider, added before the app's redaction is.
seen = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(seen))

from shared.config import Settings
from shared.telemetry import configure_telemetry, setup, stage_span

configure_telemetry(Settings.from_env({
    "STORE_BACKEND": "sqlite", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "AZURE_OPENAI_API_KEY": "k", "TELEMETRY_EXPORTER": "azuremonitor",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=0",
}))
try:
    with stage_span("intent", traceparent=None, conversation_id="c-1", stage="intent",
                    attributes={"note": "write to jane.doe@example.com"}) as span:
        span.add_event("reply", {"text": "call +44 20 7946 0958"})
        raise ValueError("card 4111 1111 1111 1111 declined")
except ValueError:
    pass
exported = seen.get_finished_spans()
print(json.dumps({
    "same_provider": setup._state.tracer_provider is provider,
    "owned": setup._state.owned,
    "processors": [type(p).__name__ for p in provider._active_span_processor._span_processors],
    "spans": [
        {"attributes": dict(s.attributes), "events": [dict(e.attributes) for e in s.events],
         "status": s.status.description}
        for s in exported
    ],
}))
"""


def test_under_the_worker_s_distro_spans_are_redacted_before_any_exporter() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # No provider or exporter of our own next to the distro's: nothing is sent twice.
    assert report["same_provider"] is True
    assert report["owned"] is False
    assert report["processors"].count("RedactingSpanProcessor") == 1
    [span] = report["spans"]
    text = json.dumps(span)
    for secret in ("jane.doe@example.com", "7946 0958", "4111 1111 1111 1111"):
        assert secret not in text
    assert span["attributes"]["switchboard.conversation_id"] == "c-1"


async def test_devhost_hands_the_function_the_message_s_trace_context(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    """devhost calls a function with a ``context`` parameter as the worker does; with no host
    spans of its own to export, its trace context is the message's ``Diagnostic-Id``."""
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    await first_intent_message(settings, publisher)
    [message] = publisher.on(settings.queues.intent)
    sender_span = str(message.application_properties["Diagnostic-Id"]).split("-")[2]
    spans.clear()
    await app_functions()["intent_agent"](service_bus_message(message))
    [stage] = [s for s in spans.get_finished_spans() if s.name == "intent agent"]
    assert format(stage.context.trace_id, "032x") == TRACE
    assert stage.parent is not None
    assert format(stage.parent.span_id, "016x") == sender_span
