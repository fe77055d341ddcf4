"""Ingest: requests from the Event Hub and batch documents from blob uploads."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import azure.functions as func

from shared.bootstrap import get_services
from shared.domain.messages import event_identity
from shared.service.pipeline import IncomingEvent
from shared.telemetry import invocation_trace, trace_id_of

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest")
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%EVENTHUB_NAME%",
    connection="EventHubConnection",
    consumer_group="%EVENTHUB_CONSUMER_GROUP%",
    cardinality=func.Cardinality.MANY,
    # Binary: the host sends the bodies as collection_bytes, where an empty body is still an
    # entry. As collection_string the host drops empty entries, and azure.functions then
    # refuses the whole batch ("Number of bodies and metadata mismatched").
    data_type=func.DataType.BINARY,
)
# Retry without bound (-1, "retry indefinitely": Azure Functions error handling and retries,
# "Retry policies"): no content of an event can make ingest raise (every event ends as a
# conversation or a rejection record), so it raises only while the store or the queue is down.
# A finite policy would then checkpoint past acknowledged events and lose them; this one holds
# the partition, backing off to one try a minute, until they can be recorded.
@bp.retry(
    strategy="exponential_backoff",
    max_retry_count="-1",
    minimum_interval="00:00:01",
    maximum_interval="00:01:00",
)
async def ingest(events: list[func.EventHubEvent], context: func.Context) -> None:
    """A batch of producer requests; the checkpoint moves only when every event is recorded."""
    services = await get_services()
    # Each conversation keeps its producer's trace (or starts one); the host's invocation span
    # for the batch is linked from each.
    with invocation_trace(context.trace_context.trace_parent):
        report = await services.pipeline.ingest_events(to_incoming(events))
    log.info(
        "ingested %d events: %d accepted, %d rejected",
        len(events),
        len(report.accepted),
        len(report.rejected),
    )


def to_incoming(events: Sequence[func.EventHubEvent]) -> list[IncomingEvent]:
    """Each event's body, its stable identity and the producer's trace context, if any.

    With ``cardinality=many`` the host sends one set of trigger metadata for the whole batch
    and every ``EventHubEvent`` carries all of it (``EventHubEvent.metadata``: "each event
    points to the common metadata of all the events"): the partition in
    ``TriggerPartitionContext``/``PartitionContext``, each event's application properties in
    ``PropertiesArray`` and its system properties in ``SystemPropertiesArray``, in event order.
    An event finds its own entry by its sequence number, unique in a partition. A
    cardinality-one event has ``Properties`` of its own.
    """
    batch = (events[0].metadata or {}) if events else {}
    incoming = []
    for event in events:
        metadata = batch
        properties = _properties(batch, event.sequence_number)
        if properties is None:  # not from one batch: the event's own metadata
            metadata = event.metadata or {}
            properties = _properties(metadata, event.sequence_number)
        identity = event_identity(_partition(metadata), event.sequence_number, event.offset)
        incoming.append(
            IncomingEvent(
                body=event.get_body(),
                identity=identity,
                traceparent=_traceparent(properties or {}),
            )
        )
    return incoming


def _partition(metadata: Mapping[str, Any]) -> str:
    for key in ("TriggerPartitionContext", "PartitionContext"):
        context = metadata.get(key)
        if isinstance(context, dict) and context.get("PartitionId") is not None:
            return str(context["PartitionId"])
    return ""


def _properties(
    metadata: Mapping[str, Any], sequence_number: int | None
) -> Mapping[str, Any] | None:
    """The event's application properties: its entry of ``PropertiesArray`` (found through
    ``SystemPropertiesArray``), or ``Properties`` for a cardinality-one event; None when the
    metadata holds neither for this event."""
    batch = metadata.get("PropertiesArray")
    system = metadata.get("SystemPropertiesArray")
    if isinstance(batch, list) and isinstance(system, list) and len(batch) == len(system):
        for properties, system_properties in zip(batch, system, strict=True):
            if (
                isinstance(system_properties, dict)
                and system_properties.get("SequenceNumber") == sequence_number
            ):
                return properties if isinstance(properties, dict) else {}
        return None
    single = metadata.get("Properties")
    if isinstance(single, dict):
        return single
    return None if "SystemPropertiesArray" in metadata else {}


def _traceparent(properties: Mapping[str, Any]) -> str | None:
    """The W3C ``traceparent`` a producer set; the Azure SDKs also write it as
    ``Diagnostic-Id``, which some producers set alone. A value in another format (the legacy
    hierarchical Request-Id) is no W3C trace context and is ignored: OpenTelemetry's W3C
    propagator decides, through :func:`trace_id_of`."""
    for key in ("traceparent", "Diagnostic-Id"):
        value = properties.get(key)
        if isinstance(value, str):
            try:
                trace_id_of(value)
            except ValueError:
                continue
            return value
    return None


@bp.function_name("ingest_batch")
@bp.blob_trigger(
    arg_name="document",
    path="%BATCH_CONTAINER%/{name}",
    connection="BatchStorage",
    source=func.BlobSource.EVENT_GRID,
)
async def ingest_batch(document: func.InputStream, context: func.Context) -> None:
    """A batch document: one conversation per valid item, a batch record with the counts."""
    services = await get_services()
    name = document.name or "unnamed"
    properties = getattr(document, "blob_properties", None) or {}
    etag = str(properties.get("ETag") or properties.get("etag") or "")
    data = document.read()
    if not etag:
        # Without an etag the content itself identifies the version of the blob.
        etag = "sha:" + hashlib.sha256(data).hexdigest()[:32]
    with invocation_trace(context.trace_context.trace_parent):
        report = await services.pipeline.ingest_document(name, etag, data)
    log.info(
        "batch %s %s: %d accepted, %d rejected",
        report.batch_id,
        report.status,
        report.accepted,
        report.rejected,
    )
