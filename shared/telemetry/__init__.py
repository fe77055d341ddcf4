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
  :func:`~shared.telemetry.redaction.redact` before any exporter sees them: in
  :class:`RedactingSpanExporter` around the exporters set up here, and in
  :class:`RedactingSpanProcessor` on the Azure Monitor distro's provider when the Functions
  worker configured that (``setup._adopt_distro``).

Exporters follow ``Settings.telemetry_exporter``: ``none``, ``console``, ``otlp``
(http/protobuf) or ``azuremonitor`` (Application Insights, authenticated with the app's managed
identity). Nothing here connects or reads the environment at import time;
:func:`configure_telemetry` does the work once per process. Before it runs (and with ``none``),
trace ids are still generated and propagated so every conversation has one, but nothing leaves
the process and metrics record nothing.

Telemetry never fails the work it observes: values it cannot record are dropped with a warning.

The package's modules: ``attributes`` (names and value checks), ``logs`` (correlation ids),
``spans`` (the redacting exporter), ``setup`` (providers and exporters, once per process),
``tracing`` (trace context and spans), ``instruments`` (the metrics) and ``redaction``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.telemetry import setup
from shared.telemetry.attributes import (
    CACHED,
    CONVERSATION_ID,
    COST_USD,
    ERROR_TYPE,
    FUNCTION,
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_PROVIDER,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM,
    GEN_AI_TOKEN_TYPE,
    INSTRUMENTATION_NAME,
    OUTCOME,
    QUEUE,
    STAGE,
    AttrValue,
)
from shared.telemetry.instruments import BacklogCallback, LLMTelemetry, Metrics, metrics
from shared.telemetry.logs import (
    LOG_FORMAT,
    CorrelationFilter,
    correlation_id,
    install_log_filters,
    reset_correlation_id,
    set_correlation_id,
)
from shared.telemetry.setup import (
    _azure_monitor_credential,
    _azure_monitor_options,
    flush_telemetry,
)
from shared.telemetry.spans import RedactingSpanExporter, RedactingSpanProcessor, redact_span
from shared.telemetry.tracing import (
    LLMSpan,
    current_traceparent,
    invocation_trace,
    llm_span,
    new_traceparent,
    stage_span,
    trace_id_of,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from shared.config import Settings


def configure_telemetry(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> None:
    """Set up tracing, metrics and log filters for this process, once (see ``setup.configure``);
    the instruments then follow the new meter."""
    setup.configure(settings, span_exporter=span_exporter, metric_reader=metric_reader)
    metrics.rebind()


def shutdown_telemetry() -> None:
    """Flush and stop exporters; the next configure starts afresh."""
    setup.shutdown()
    metrics.rebind()


__all__ = [
    "CACHED",
    "CONVERSATION_ID",
    "COST_USD",
    "ERROR_TYPE",
    "FUNCTION",
    "GEN_AI_FINISH_REASONS",
    "GEN_AI_INPUT_TOKENS",
    "GEN_AI_OPERATION",
    "GEN_AI_OUTPUT_TOKENS",
    "GEN_AI_PROVIDER",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_SYSTEM",
    "GEN_AI_TOKEN_TYPE",
    "INSTRUMENTATION_NAME",
    "LOG_FORMAT",
    "OUTCOME",
    "QUEUE",
    "STAGE",
    "AttrValue",
    "BacklogCallback",
    "CorrelationFilter",
    "LLMSpan",
    "LLMTelemetry",
    "Metrics",
    "RedactingSpanExporter",
    "RedactingSpanProcessor",
    "_azure_monitor_credential",
    "_azure_monitor_options",
    "configure_telemetry",
    "correlation_id",
    "current_traceparent",
    "flush_telemetry",
    "install_log_filters",
    "invocation_trace",
    "llm_span",
    "metrics",
    "new_traceparent",
    "redact_span",
    "reset_correlation_id",
    "set_correlation_id",
    "shutdown_telemetry",
    "stage_span",
    "trace_id_of",
]
