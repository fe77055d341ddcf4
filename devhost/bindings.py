"""Building the real ``azure.functions`` binding types from what the broker delivers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage

from devhost.broker import ReceivedMessage, StoredEvent


def _utc(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


def service_bus_message(message: ReceivedMessage) -> ServiceBusMessage:
    """The message a Service Bus trigger receives, with the broker's delivery metadata."""
    return ServiceBusMessage(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        subject=message.subject,
        label=message.subject,
        application_properties=dict(message.application_properties),
        user_properties=dict(message.application_properties),
        delivery_count=message.delivery_count,
        enqueued_time_utc=_utc(message.enqueued_time),
        enqueued_sequence_number=message.sequence_number,
        sequence_number=message.sequence_number,
        lock_token=message.lock_token,
        locked_until=_utc(message.locked_until),
        scheduled_enqueue_time_utc=_utc(message.scheduled_enqueue_time),
    )


def event_hub_event(event: StoredEvent, *, consumer_group: str) -> func.EventHubEvent:
    """One event of a cardinality-many Event Hub trigger batch."""
    context = {
        "PartitionId": str(event.partition_id),
        "EventHubName": event.hub,
        "ConsumerGroup": consumer_group,
    }
    # The worker hands trigger metadata over as typed data, JSON for objects.
    metadata: dict[str, Any] = {
        "PartitionContext": func.meta.Datum(json.dumps(context), "json"),
        "Properties": func.meta.Datum(json.dumps(dict(event.properties)), "json"),
    }
    return func.EventHubEvent(
        body=event.body,
        trigger_metadata=metadata,
        enqueued_time=_utc(event.enqueued_time),
        partition_key=event.partition_key,
        sequence_number=event.sequence_number,
        offset=event.offset,
    )


def blob_stream(container: str, name: str, data: bytes, etag: str) -> func.InputStream:
    return func.blob.InputStream(
        data=data,
        name=f"{container}/{name}",
        uri=f"devhost://{container}/{name}",
        length=len(data),
        blob_properties={"ETag": etag, "ContentLength": len(data)},
        metadata={},
    )
