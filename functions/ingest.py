"""Ingest: requests from the Event Hub and batch documents from blob uploads."""

from __future__ import annotations

import hashlib
import logging

import azure.functions as func

from shared.bootstrap import get_services
from shared.domain.messages import event_identity
from shared.service.pipeline import IncomingEvent

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest")
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%EVENTHUB_NAME%",
    connection="EventHubConnection",
    consumer_group="%EVENTHUB_CONSUMER_GROUP%",
    cardinality=func.Cardinality.MANY,
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
async def ingest(events: list[func.EventHubEvent]) -> None:
    """A batch of producer requests; the checkpoint moves only when every event is recorded."""
    services = await get_services()
    report = await services.pipeline.ingest_events([to_incoming(e) for e in events])
    log.info(
        "ingested %d events: %d accepted, %d rejected",
        len(events),
        len(report.accepted),
        len(report.rejected),
    )


def to_incoming(event: func.EventHubEvent) -> IncomingEvent:
    """The event's body, its stable identity and the producer's trace context, if any."""
    metadata = event.metadata or {}
    context = metadata.get("PartitionContext") or {}
    partition = context.get("PartitionId", "") if isinstance(context, dict) else ""
    properties = metadata.get("Properties") or {}
    traceparent = properties.get("traceparent") if isinstance(properties, dict) else None
    identity = event_identity(partition, event.sequence_number, event.offset)
    return IncomingEvent(
        body=event.get_body(),
        identity=identity,
        traceparent=traceparent if isinstance(traceparent, str) else None,
    )


@bp.function_name("ingest_batch")
@bp.blob_trigger(
    arg_name="document",
    path="%BATCH_CONTAINER%/{name}",
    connection="BatchStorage",
    source=func.BlobSource.EVENT_GRID,
)
async def ingest_batch(document: func.InputStream) -> None:
    """A batch document: one conversation per valid item, a batch record with the counts."""
    services = await get_services()
    name = document.name or "unnamed"
    properties = getattr(document, "blob_properties", None) or {}
    etag = str(properties.get("ETag") or properties.get("etag") or "")
    data = document.read()
    if not etag:
        # Without an etag the content itself identifies the version of the blob.
        etag = "sha:" + hashlib.sha256(data).hexdigest()[:32]
    report = await services.pipeline.ingest_document(name, etag, data)
    log.info(
        "batch %s %s: %d accepted, %d rejected",
        report.batch_id,
        report.status,
        report.accepted,
        report.rejected,
    )
