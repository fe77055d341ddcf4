"""OpenTelemetry for the pipeline: one trace per conversation, GenAI spans, metrics and log context.

* **Traces.** Every queue hop continues the conversation's trace from the W3C ``traceparent`` the
  previous hop put on the message (:func:`stage_span`, :func:`current_traceparent`); model calls
  are GenAI client spans (:func:`llm_span`) carrying tokens and cost.
* **Metrics.** :data:`metrics` owns every instrument (stage latency, dead-letters, tokens, cost,
  429s, cache, breakers, queue backlog, instances), created lazily on the ``switchboard`` meter.
* **Logs.** Handlers on the root logger get a filter adding ``correlation_id`` (the conversation),
  ``trace_id`` and ``span_id`` to every record, and
  :class:`~shared.telemetry.redaction.RedactingFilter`.
* **Redaction.** Span names, attributes, event attributes and status descriptions pass through
  :func:`~shared.telemetry.redaction.redact` in :class:`RedactingSpanExporter` before any
  exporter sees them.

Exporters follow ``Settings.telemetry_exporter``: ``none``, ``console``, ``otlp``
(http/protobuf) or ``azuremonitor`` (Application Insights, authenticated with the app's managed
identity). Nothing here connects or reads the environment at import time;
:func:`configure_telemetry` does the work once per process. Before it runs (and with ``none``),
trace ids are still generated and propagated so every conversation has one, but nothing leaves
the process and metrics record nothing.

Telemetry never fails the work it observes: values it cannot record are dropped with a warning.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import math
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.metrics import _Gauge as Gauge
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, Span, SpanKind, Status
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AnyValue, Attributes, AttributeValue

from shared.config import Settings
from shared.errors import ConfigError
from shared.telemetry.redaction import RedactingFilter, redact

if TYPE_CHECKING:
    from shared.llm.metrics import LLMMetrics

logger = logging.getLogger(__name__)

AttrValue = AttributeValue
"""What a span attribute may hold: str, bool, int, float or a homogeneous sequence of them."""

INSTRUMENTATION_NAME: Final = "switchboard"
LOG_FORMAT: Final = (
    "%(asctime)s %(levelname)s %(name)s [cid=%(correlation_id)s trace=%(trace_id)s] %(message)s"
)
"""A ``logging.Formatter`` format that shows the correlation fields the log filter adds."""

# Attribute names. GenAI ones follow the OpenTelemetry GenAI semantic conventions; Azure Monitor
# reads ``gen_ai.system`` to show model calls as GenAI dependencies.
CONVERSATION_ID: Final = "switchboard.conversation_id"
STAGE: Final = "switchboard.stage"
OUTCOME: Final = "switchboard.outcome"
COST_USD: Final = "switchboard.cost_usd"
CACHED: Final = "switchboard.llm.cached"
GEN_AI_SYSTEM: Final = "gen_ai.system"
GEN_AI_PROVIDER: Final = "gen_ai.provider.name"
GEN_AI_OPERATION: Final = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
ERROR_TYPE: Final = "error.type"
QUEUE: Final = "messaging.destination.name"
FUNCTION: Final = "faas.name"

_PROVIDER_NAMES: Final = {"az.ai.openai": "azure.ai.openai", "openai": "openai"}
_BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_METRIC_EXPORT_INTERVAL_MS: Final = 60_000
_EXPORTER_SETTING: Final = {
    "otlp": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "azuremonitor": "APPLICATIONINSIGHTS_CONNECTION_STRING",
}

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_IDS: Final = RandomIdGenerator()


# ------------------------------------------------------------------------- correlation id

_CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "switchboard_correlation_id", default=None
)


def correlation_id() -> str | None:
    """The conversation id of the work in progress, for logs; ``None`` outside a stage."""
    return _CORRELATION_ID.get()


def set_correlation_id(cid: str | None) -> contextvars.Token[str | None]:
    """Set the correlation id of the current context; ``reset_correlation_id`` undoes it."""
    return _CORRELATION_ID.set(cid)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    """Restore the correlation id that was current before ``set_correlation_id``."""
    _CORRELATION_ID.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``trace_id`` and ``span_id`` to records (``-`` when unknown).

    Values passed explicitly through ``extra=`` win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _CORRELATION_ID.get() or "-"
        if not hasattr(record, "trace_id"):
            context = trace.get_current_span().get_span_context()
            record.trace_id = format(context.trace_id, "032x") if context.is_valid else "-"
            record.span_id = format(context.span_id, "016x") if context.is_valid else "-"
        return True


def install_log_filters(handler: logging.Handler) -> None:
    """Give ``handler`` the correlation fields and redaction; safe to call more than once.

    :func:`configure_telemetry` does this for the root logger's handlers; call it for a handler
    added later (a devhost console handler, say).
    """
    if not any(isinstance(f, CorrelationFilter) for f in handler.filters):
        handler.addFilter(CorrelationFilter())
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


def _install_root_log_filters() -> None:
    for handler in logging.getLogger().handlers:
        install_log_filters(handler)
    # The handler of last resort prints records no handler took; it must not print PII either.
    if logging.lastResort is not None:
        install_log_filters(logging.lastResort)


# ------------------------------------------------------------------------- span redaction


def _redact_attribute(value: AnyValue) -> AnyValue:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_attribute(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return tuple(_redact_attribute(item) for item in value)
    return value


def _redact_attributes(attributes: Attributes) -> Attributes:
    if not attributes:
        return attributes
    redacted = BoundedAttributes(
        maxlen=None,
        attributes={key: _redact_attribute(value) for key, value in attributes.items()},
        immutable=True,
    )
    redacted.dropped = getattr(attributes, "dropped", 0)
    return redacted


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span with its name, attributes, events, links and status redacted."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redact_attributes(span.attributes),
        events=[
            Event(redact(event.name), _redact_attributes(event.attributes), event.timestamp)
            for event in span.events
        ],
        links=[Link(link.context, _redact_attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Wraps an exporter so it only ever receives redacted spans.

    If redaction itself fails, the batch is dropped rather than exported unredacted.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    @property
    def inner(self) -> SpanExporter:
        return self._inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            redacted = [redact_span(span) for span in spans]
        except Exception:
            logger.exception("could not redact %d spans; dropping them", len(spans))
            return SpanExportResult.FAILURE
        return self._inner.export(redacted)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


# -------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class _Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    tracer: trace.Tracer
    meter: Meter
    generation: int
    exporter: str
    credential: Any


_lock = threading.RLock()
_state: _Telemetry | None = None
_generation = 0
_globals_installed = False
_atexit_registered = False
_unconfigured_tracer: trace.Tracer | None = None


def configure_telemetry(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> None:
    """Set up tracing, metrics and log filters for this process, once.

    A second call is a no-op, unless it injects ``span_exporter`` or ``metric_reader`` (tests):
    then the previous providers are shut down and replaced, and the injected exporter receives
    every span synchronously when it ends. An injected exporter or reader replaces the one
    ``settings.telemetry_exporter`` would choose for that signal only. The process-global
    OpenTelemetry providers, which third-party instrumentation uses, are set by the first call.
    Raises ``ConfigError`` naming the setting when an exporter cannot be created.
    """
    global _state, _generation, _atexit_registered
    with _lock:
        injected = span_exporter is not None or metric_reader is not None
        if _state is not None and not injected:
            if _state.exporter not in ("injected", settings.telemetry_exporter):
                logger.warning(
                    "telemetry is already configured with exporter %s; ignoring %s",
                    _state.exporter,
                    settings.telemetry_exporter,
                )
            _install_root_log_filters()
            return
        if _state is not None:
            _shutdown(_state)
            _state = None
        _generation += 1
        state = _build(settings, span_exporter, metric_reader, generation=_generation)
        _state = state
        _install_globals(state.tracer_provider, state.meter_provider)
        _install_root_log_filters()
        if not _atexit_registered:
            atexit.register(shutdown_telemetry)
            _atexit_registered = True
    metrics.rebind()
    logger.info("telemetry configured (exporter %s)", state.exporter)


def _build(
    settings: Settings,
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
    *,
    generation: int,
) -> _Telemetry:
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.namespace": "switchboard",
            "service.instance.id": uuid.uuid4().hex,
        }
    )
    kind = settings.telemetry_exporter
    credential = None
    if kind == "azuremonitor" and (span_exporter is None or metric_reader is None):
        credential = _azure_monitor_credential(settings)
    processor: SpanProcessor | None = None
    try:
        if span_exporter is not None:
            # Synchronous, so a test sees each span the moment it ends.
            processor = SimpleSpanProcessor(RedactingSpanExporter(span_exporter))
        elif (chosen := _span_exporter_for(settings, credential)) is not None:
            processor = BatchSpanProcessor(RedactingSpanExporter(chosen))
        readers = (
            [metric_reader]
            if metric_reader is not None
            else _metric_readers_for(settings, credential)
        )
    except Exception as exc:
        close = getattr(credential, "close", None)
        if callable(close):
            close()
        setting = _EXPORTER_SETTING.get(kind, "TELEMETRY_EXPORTER")
        raise ConfigError(
            setting, f"the {kind} exporter could not be created: {redact(str(exc))}"
        ) from exc
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if processor is not None:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, shutdown_on_exit=False
    )
    return _Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_NAME),
        meter=meter_provider.get_meter(INSTRUMENTATION_NAME),
        generation=generation,
        exporter="injected" if span_exporter or metric_reader else kind,
        credential=credential,
    )


def shutdown_telemetry() -> None:
    """Flush and stop exporters and release their credential; the next configure starts afresh."""
    global _state, _generation
    with _lock:
        state, _state = _state, None
        _generation += 1
    if state is not None:
        _shutdown(state)
    metrics.rebind()


def flush_telemetry(timeout_s: float = 5.0) -> bool:
    """Export what is buffered, e.g. before a worker goes idle; ``False`` if it timed out."""
    state = _state
    if state is None:
        return True
    millis = int(timeout_s * 1000)
    spans_ok = state.tracer_provider.force_flush(millis)
    metrics_ok = state.meter_provider.force_flush(millis)
    return spans_ok and metrics_ok


def _shutdown(state: _Telemetry) -> None:
    try:
        state.tracer_provider.shutdown()
        state.meter_provider.shutdown()
    finally:
        close = getattr(state.credential, "close", None)
        if callable(close):
            close()


def _install_globals(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    global _globals_installed
    if _globals_installed:
        return
    trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(meter_provider)
    _globals_installed = True


def _signal_endpoint(base: str | None, signal: str) -> str | None:
    """OTLP/HTTP appends ``/v1/<signal>`` to the base endpoint; ``None`` lets the SDK decide."""
    if base is None:
        return None
    return f"{base.rstrip('/')}/v1/{signal}"


def _azure_monitor_credential(settings: Settings) -> Any:
    """The app's user-assigned managed identity, when a client id is configured.

    Without one the exporter falls back to ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
    (``Authorization=AAD``), which it reads itself.
    """
    if not settings.managed_identity_client_id:
        return None
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)


def _azure_monitor_options(settings: Settings, credential: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_string": settings.appinsights_connection_string}
    if credential is not None:
        # Passing credential=None would switch off the exporter's own AAD fallback.
        options["credential"] = credential
    return options


def _span_exporter_for(settings: Settings, credential: Any) -> SpanExporter | None:
    kind = settings.telemetry_exporter
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # The SDK's default stream is bound at its import; use the stream current now.
        return ConsoleSpanExporter(service_name=settings.service_name, out=sys.stdout)
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=_signal_endpoint(settings.otlp_endpoint, "traces"))
    if kind == "azuremonitor":
        from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

        exporter: SpanExporter = AzureMonitorTraceExporter(
            **_azure_monitor_options(settings, credential)
        )
        return exporter
    return None


def _metric_readers_for(settings: Settings, credential: Any) -> list[MetricReader]:
    kind = settings.telemetry_exporter
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        exporter: Any = ConsoleMetricExporter(out=sys.stdout)
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=_signal_endpoint(settings.otlp_endpoint, "metrics"))
    elif kind == "azuremonitor":
        from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

        exporter = AzureMonitorMetricExporter(**_azure_monitor_options(settings, credential))
    else:
        return []
    return [
        PeriodicExportingMetricReader(exporter, export_interval_millis=_METRIC_EXPORT_INTERVAL_MS)
    ]


def _tracer() -> trace.Tracer:
    global _unconfigured_tracer
    state = _state
    if state is not None:
        return state.tracer
    # Unconfigured, trace ids are still generated and propagated (conversations record theirs)
    # but nothing is exported. A provider some host set globally is deliberately not used: its
    # exporters would see spans without redaction.
    with _lock:
        if _unconfigured_tracer is None:
            _unconfigured_tracer = TracerProvider(shutdown_on_exit=False).get_tracer(
                INSTRUMENTATION_NAME
            )
        return _unconfigured_tracer


def _current_generation() -> int:
    state = _state
    return state.generation if state is not None else _generation


def _current_meter() -> tuple[int, Meter]:
    state = _state
    if state is not None:
        return state.generation, state.meter
    return _generation, otel_metrics.NoOpMeter(INSTRUMENTATION_NAME)


# -------------------------------------------------------------------------- trace context


def new_traceparent() -> str:
    """A fresh, sampled W3C traceparent: a new trace for a producer that has none."""
    return f"00-{_IDS.generate_trace_id():032x}-{_IDS.generate_span_id():016x}-01"


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id of a W3C traceparent; ``ValueError`` if it is malformed."""
    context = trace.get_current_span(_extract(traceparent)).get_span_context()
    if not context.is_valid:
        raise ValueError(
            f"malformed traceparent ({len(traceparent)} characters): expected "
            "'00-<32 hex trace id>-<16 hex span id>-<2 hex flags>' with non-zero ids"
        )
    return format(context.trace_id, "032x")


def current_traceparent() -> str | None:
    """The traceparent of the active span, to put on the next message; ``None`` without one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _extract(traceparent: str | None) -> Context:
    # An empty starting context means "no parent": a malformed or missing traceparent starts a
    # new trace instead of silently joining whatever span happens to be active.
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({"traceparent": traceparent.strip()}, context=Context())


@contextmanager
def stage_span(
    name: str,
    *,
    traceparent: str | None,
    conversation_id: str,
    stage: str,
    attributes: Mapping[str, AttrValue] | None = None,
) -> Iterator[Span]:
    """A consumer span for one stage of one conversation, continuing ``traceparent``'s trace.

    A missing or malformed ``traceparent`` starts a new trace. While the span is open, logs carry
    ``conversation_id`` as their correlation id. An exception is recorded on the span, marks it
    as an error and propagates.
    """
    parent = _extract(traceparent)
    if traceparent and not trace.get_current_span(parent).get_span_context().is_valid:
        logger.debug(
            "traceparent of %s is malformed (%d characters); starting a new trace",
            conversation_id,
            len(traceparent),
        )
    span_attributes: dict[str, AttrValue] = {
        CONVERSATION_ID: conversation_id,
        STAGE: str(stage),
        "messaging.operation.type": "process",
    }
    if attributes:
        span_attributes.update(attributes)
    token = set_correlation_id(conversation_id)
    try:
        with _tracer().start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=span_attributes
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                raise
    finally:
        reset_correlation_id(token)


class LLMSpan:
    """The open span of one model call; :meth:`record` adds what the response reported."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def record(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float = 0.0,
        cached: bool = False,
        finish_reason: str | None = None,
        *,
        response_model: str | None = None,
    ) -> None:
        """Set token usage, cost, cache and finish reason (GenAI semantic conventions)."""
        attributes: dict[str, AttrValue] = {CACHED: cached}
        if _valid_count(prompt_tokens, "prompt_tokens"):
            attributes[GEN_AI_INPUT_TOKENS] = prompt_tokens
        if _valid_count(completion_tokens, "completion_tokens"):
            attributes[GEN_AI_OUTPUT_TOKENS] = completion_tokens
        if _valid_amount(cost_usd, "cost_usd"):
            attributes[COST_USD] = float(cost_usd)
        if finish_reason:
            attributes[GEN_AI_FINISH_REASONS] = (finish_reason,)
        if response_model:
            attributes[GEN_AI_RESPONSE_MODEL] = response_model
        self.span.set_attributes(attributes)

    def retry(self, reason: str, delay_s: float) -> None:
        """Note a throttled or failed attempt that will be retried after ``delay_s`` seconds."""
        self.span.add_event("gen_ai.retry", {"reason": reason, "delay_s": max(0.0, float(delay_s))})


@contextmanager
def llm_span(
    *,
    deployment: str,
    stage: str,
    operation: str = "chat",
    system: str = "az.ai.openai",
) -> Iterator[LLMSpan]:
    """A GenAI client span for one model call, a child of the active stage span.

    ``system`` is ``az.ai.openai`` for Azure OpenAI and ``openai`` for another OpenAI-compatible
    endpoint (the simulator, Ollama, vLLM).
    """
    attributes: dict[str, AttrValue] = {
        GEN_AI_SYSTEM: system,
        GEN_AI_PROVIDER: _PROVIDER_NAMES.get(system, system),
        GEN_AI_OPERATION: operation,
        GEN_AI_REQUEST_MODEL: deployment,
        STAGE: str(stage),
    }
    with _tracer().start_as_current_span(
        f"{operation} {deployment}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield LLMSpan(span)
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            raise


def _valid_count(value: int, what: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return True
    logger.warning("dropping %s: %r is not a non-negative integer", what, value)
    return False


def _valid_amount(value: float, what: str) -> bool:
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return True
    logger.warning("dropping %s: %r is not a non-negative finite number", what, value)
    return False


# -------------------------------------------------------------------------------- metrics

_I = TypeVar("_I")
BacklogCallback = Callable[[], Mapping[str, int]]


class Metrics:
    """Every instrument Switchboard records, created lazily on the ``switchboard`` meter.

    Instruments are re-created when :func:`configure_telemetry` replaces the meter provider,
    so a module-level instance stays valid; nothing is created or exported at import time.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._generation = -1
        self._meter: Meter | None = None
        self._instruments: dict[str, object] = {}
        self._backlog: list[BacklogCallback] = []
        self._instances: list[BacklogCallback] = []

    # -- pipeline

    def stage_completed(self, stage: str, outcome: str, latency_s: float) -> None:
        """A stage finished a message: ``switchboard.stage.duration`` (s) and ``.completed``."""
        attributes = {STAGE: str(stage), OUTCOME: str(outcome)}
        self._counter("switchboard.stage.completed", "{message}", "Messages a stage finished").add(
            1, attributes
        )
        if not isinstance(latency_s, int | float) or not math.isfinite(latency_s):
            logger.warning("dropping stage latency %r: not a finite number", latency_s)
            return
        # A wall clock stepping backwards yields a negative latency; it was ~0 in truth.
        self._histogram(
            "switchboard.stage.duration", "s", "Time a stage took per message", _SECONDS_BUCKETS
        ).record(max(0.0, float(latency_s)), attributes)

    def deadlettered(self, queue: str, reason: str) -> None:
        """A message was dead-lettered; ``reason`` should be a reason code, not free text."""
        self._counter(
            "switchboard.messages.deadlettered", "{message}", "Messages dead-lettered"
        ).add(1, {QUEUE: queue, ERROR_TYPE: redact(str(reason))[:64]})

    def rejected(self, source: str, code: str) -> None:
        """An input was refused by the request contract; ``code`` is its reason code."""
        self._counter(
            "switchboard.requests.rejected", "{request}", "Requests refused by the contract"
        ).add(1, {"source": source, ERROR_TYPE: code})

    def ingest_failed(self, events: int) -> None:
        """Events an ingest could not record (store or queue down); the batch is retried."""
        self._counter(
            "switchboard.ingest.failures", "{event}", "Events an ingest attempt failed to record"
        ).add(events)

    # -- model calls

    def tokens(
        self, stage: str, deployment: str, prompt: int, completion: int, cost_usd: float
    ) -> None:
        """Tokens and cost a stage spent: ``switchboard.llm.tokens`` and ``.llm.cost``."""
        tokens = self._counter("switchboard.llm.tokens", "{token}", "Tokens used per stage")
        base = {STAGE: str(stage), GEN_AI_REQUEST_MODEL: deployment}
        if _valid_count(prompt, "prompt tokens"):
            tokens.add(prompt, {**base, GEN_AI_TOKEN_TYPE: "input"})
        if _valid_count(completion, "completion tokens"):
            tokens.add(completion, {**base, GEN_AI_TOKEN_TYPE: "output"})
        if _valid_amount(cost_usd, "cost"):
            self._counter("switchboard.llm.cost", "USD", "Model cost per stage").add(
                float(cost_usd), base
            )

    def throttled(self, deployment: str) -> None:
        """The endpoint answered 429: ``switchboard.llm.throttled``."""
        self._counter("switchboard.llm.throttled", "{response}", "HTTP 429 answers").add(
            1, {GEN_AI_REQUEST_MODEL: deployment}
        )

    def cache(self, hit: bool, deployment: str | None = None, *, stage: str | None = None) -> None:
        """A response-cache lookup: ``switchboard.llm.cache`` with ``switchboard.cache.result``."""
        attributes = {"switchboard.cache.result": "hit" if hit else "miss"}
        if deployment:
            attributes[GEN_AI_REQUEST_MODEL] = deployment
        if stage:
            attributes[STAGE] = str(stage)
        self._counter("switchboard.llm.cache", "{lookup}", "Response-cache lookups").add(
            1, attributes
        )

    def breaker_state(self, deployment: str, state: str) -> None:
        """A circuit breaker changed state (closed, half_open, open).

        ``switchboard.llm.breaker.state`` holds 0, 1 or 2 per deployment, and
        ``switchboard.llm.breaker.transitions`` counts the changes.
        """
        value = _BREAKER_STATES.get(state.lower())
        if value is None:
            logger.warning("unknown breaker state %r for %s; not recorded", state, deployment)
            return
        self._counter(
            "switchboard.llm.breaker.transitions", "{transition}", "Circuit breaker changes"
        ).add(1, {GEN_AI_REQUEST_MODEL: deployment, "switchboard.breaker.state": state.lower()})
        self._gauge(
            "switchboard.llm.breaker.state", "1", "Breaker state: 0 closed, 1 half open, 2 open"
        ).set(value, {GEN_AI_REQUEST_MODEL: deployment})

    def call_completed(self, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        """One HTTP call to the model: ``gen_ai.client.operation.duration`` (s)."""
        if not isinstance(latency_s, int | float) or not math.isfinite(latency_s):
            logger.warning("dropping call latency %r: not a finite number", latency_s)
            return
        attributes = {
            GEN_AI_OPERATION: "chat",
            GEN_AI_REQUEST_MODEL: deployment,
            STAGE: str(stage),
            OUTCOME: outcome,
        }
        if outcome != "ok":
            attributes[ERROR_TYPE] = outcome
        self._histogram(
            "gen_ai.client.operation.duration", "s", "Model call duration", _SECONDS_BUCKETS
        ).record(max(0.0, float(latency_s)), attributes)

    def call_tokens(self, stage: str, deployment: str, prompt: int, completion: int) -> None:
        """Tokens of one model call: ``gen_ai.client.token.usage`` (a distribution per call)."""
        histogram = self._histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens per model call",
            (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
        )
        base = {GEN_AI_OPERATION: "chat", GEN_AI_REQUEST_MODEL: deployment, STAGE: str(stage)}
        if _valid_count(prompt, "prompt tokens"):
            histogram.record(prompt, {**base, GEN_AI_TOKEN_TYPE: "input"})
        if _valid_count(completion, "completion tokens"):
            histogram.record(completion, {**base, GEN_AI_TOKEN_TYPE: "output"})

    def call_cost(self, stage: str, deployment: str, cost_usd: float) -> None:
        """Cost of one model call: ``switchboard.llm.call.cost`` (a distribution per call)."""
        if _valid_amount(cost_usd, "call cost"):
            self._histogram(
                "switchboard.llm.call.cost",
                "USD",
                "Cost per model call",
                (0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0),
            ).record(float(cost_usd), {GEN_AI_REQUEST_MODEL: deployment, STAGE: str(stage)})

    def quota_wait(self, deployment: str, seconds: float) -> None:
        """Time a call waited for quota: ``switchboard.llm.quota_wait`` (s)."""
        if _valid_amount(seconds, "quota wait"):
            self._histogram(
                "switchboard.llm.quota_wait", "s", "Wait for quota before a call", _SECONDS_BUCKETS
            ).record(float(seconds), {GEN_AI_REQUEST_MODEL: deployment})

    def rescheduled(self, stage: str) -> None:
        """A message was re-sent later instead of waiting under its lock."""
        self._counter(
            "switchboard.messages.rescheduled", "{message}", "Messages re-sent with a delay"
        ).add(1, {STAGE: str(stage)})

    def fallback(self, stage: str, primary: str, used: str) -> None:
        """A call was served by a fallback deployment: ``switchboard.llm.fallback``."""
        self._counter("switchboard.llm.fallback", "{call}", "Calls served by a fallback").add(
            1, {STAGE: str(stage), GEN_AI_REQUEST_MODEL: primary, "switchboard.llm.used": used}
        )

    # -- observed

    def observe_backlog(self, callback: BacklogCallback) -> None:
        """Report ``switchboard.queue.backlog`` per queue from ``callback`` at each collection."""
        with self._lock:
            self._backlog.append(callback)
        self.rebind()

    def observe_instances(self, callback: BacklogCallback) -> None:
        """Report ``switchboard.function.instances`` per function from ``callback``."""
        with self._lock:
            self._instances.append(callback)
        self.rebind()

    # -- plumbing

    def rebind(self) -> None:
        """Follow the current meter: after (re)configuration, instruments are created afresh."""
        generation, meter = _current_meter()
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._meter = meter
                self._instruments = {}
            # Observable gauges report through callbacks, so they must exist on the meter
            # before the first collection rather than on first use. The callbacks read the
            # live lists, so a source added later is picked up without a new instrument.
            observed = (
                ("switchboard.queue.backlog", self._backlog, QUEUE, "{message}"),
                ("switchboard.function.instances", self._instances, FUNCTION, "{instance}"),
            )
            for name, sources, attribute, unit in observed:
                if sources and name not in self._instruments:
                    self._instruments[name] = meter.create_observable_gauge(
                        name,
                        callbacks=[_observations(sources, attribute)],
                        unit=unit,
                        description=f"Current value per {attribute}",
                    )

    def _instrument(self, name: str, create: Callable[[Meter], _I]) -> _I:
        with self._lock:
            if _current_generation() != self._generation or self._meter is None:
                self.rebind()
            instrument = self._instruments.get(name)
            if instrument is None:
                assert self._meter is not None
                instrument = create(self._meter)
                self._instruments[name] = instrument
            return cast(_I, instrument)

    def _counter(self, name: str, unit: str, description: str) -> Counter:
        return self._instrument(
            name, lambda m: m.create_counter(name, unit=unit, description=description)
        )

    def _histogram(
        self, name: str, unit: str, description: str, buckets: Sequence[float]
    ) -> Histogram:
        return self._instrument(
            name,
            lambda m: m.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=buckets,
            ),
        )

    def _gauge(self, name: str, unit: str, description: str) -> Gauge:
        return self._instrument(
            name, lambda m: m.create_gauge(name, unit=unit, description=description)
        )


def _observations(
    callbacks: list[BacklogCallback], attribute: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        found: list[Observation] = []
        for callback in list(callbacks):
            try:
                values = callback()
                found.extend(Observation(int(v), {attribute: str(k)}) for k, v in values.items())
            except Exception:
                # One failing source must not blank the others or break the collection.
                logger.warning("a %s callback failed; skipped this collection", attribute)
        return found

    return observe


metrics: Final = Metrics()
"""The process's instruments; before :func:`configure_telemetry` they record nothing."""


class LLMTelemetry:
    """The LLM layer's metrics callbacks (``shared.llm.metrics.LLMMetrics``) on OpenTelemetry.

    Per-call values go to per-call distributions (``gen_ai.client.*``); per-stage totals are
    recorded by the pipeline through :meth:`Metrics.tokens`, so nothing is counted twice.
    """

    def __init__(self, sink: Metrics | None = None) -> None:
        self._m = sink if sink is not None else metrics

    def tokens(self, *, stage: str, deployment: str, prompt: int, completion: int) -> None:
        self._m.call_tokens(stage, deployment, prompt, completion)

    def cost(self, *, stage: str, deployment: str, usd: float) -> None:
        self._m.call_cost(stage, deployment, usd)

    def call(self, *, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        self._m.call_completed(stage, deployment, outcome, latency_s)

    def throttled(self, *, deployment: str, retry_after_s: float | None) -> None:
        self._m.throttled(deployment)

    def quota_wait(self, *, deployment: str, seconds: float) -> None:
        self._m.quota_wait(deployment, seconds)

    def rescheduled(self, *, stage: str, delay_s: float, reason: str) -> None:
        self._m.rescheduled(stage)

    def cache(self, *, stage: str, hit: bool) -> None:
        self._m.cache(hit, stage=stage)

    def breaker(self, *, deployment: str, state: str) -> None:
        self._m.breaker_state(deployment, state)

    def fallback(self, *, stage: str, primary: str, used: str) -> None:
        self._m.fallback(stage, primary, used)


if TYPE_CHECKING:
    _llm_metrics_conforms: LLMMetrics = LLMTelemetry()
