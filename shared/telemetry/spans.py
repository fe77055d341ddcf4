"""Span redaction: names, attributes, events and statuses are redacted before export, by an
exporter wrapper where the providers are ours and by a span processor where they are not."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import (
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import AnyValue, Attributes

from shared.telemetry.redaction import redact

logger = logging.getLogger(__name__)


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


class RedactingSpanProcessor(SpanProcessor):
    """Redacts every span of a provider whose exporters are not ours to wrap.

    When the Functions Python worker configures the Azure Monitor distro
    (``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``), the process's tracer provider and its
    exporting processors belong to the distro. This processor, added to that provider, rewrites
    each span in ``_on_ending`` - the SDK's OnEnding hook, which every processor of the provider
    runs synchronously, on the ending thread, before any processor's ``on_end`` sees the span - so
    whatever exports it (a batch processor included, whichever order the processors were added
    in) only ever receives the redacted name, attributes, events, links and status.

    If redaction fails, the span's attributes and events are dropped rather than left as they
    were.
    """

    def _on_ending(self, span: Span) -> None:
        # The SDK's Span keeps its state in these fields; the readable copy every ``on_end``
        # receives is made from them after this hook returns.
        try:
            redacted = redact_span(span)
            span._name = redacted.name
            span._attributes = redacted.attributes
            span._events = redacted.events
            span._links = redacted.links
            span._status = redacted.status
        except Exception:
            logger.exception("could not redact a span; dropping its attributes and events")
            span._attributes = BoundedAttributes(maxlen=None, attributes={}, immutable=True)
            span._events = ()
            span._links = ()
