"""Drive the real Function App in-process: build the binding types the Functions host would
build from queued messages and call the decorated functions until the queues are quiet."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Coroutine
from typing import Any

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage

from shared.config import Settings
from shared.ports import OutboundMessage
from tests.support.fakes import RecordingPublisher

UserFunction = Callable[..., Coroutine[Any, Any, Any]]


def indexed() -> list[Any]:
    """The app's functions as the worker indexes them (``get_functions()`` runs once)."""
    import function_app
    from devhost.appmodel import indexed_functions

    return indexed_functions(function_app.app)


def app_functions() -> dict[str, UserFunction]:
    return {f.get_function_name(): f.get_user_function() for f in indexed()}


def service_bus_message(message: OutboundMessage, *, delivery_count: int = 1) -> ServiceBusMessage:
    now = dt.datetime.now(dt.UTC)
    return ServiceBusMessage(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        application_properties=dict(message.application_properties),
        user_properties={},
        delivery_count=delivery_count,
        enqueued_time_utc=now,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
        subject=message.subject,
        lock_token="00000000-0000-0000-0000-000000000000",
    )


def hub_event(body: bytes, *, partition: str = "0", sequence: int = 1) -> func.EventHubEvent:
    return func.EventHubEvent(
        body=body,
        trigger_metadata={
            "PartitionContext": func.meta.Datum(json.dumps({"PartitionId": partition}), "json")
        },
        enqueued_time=dt.datetime.now(dt.UTC),
        sequence_number=sequence,
        offset=str(sequence * 100),
    )


QUEUE_FUNCTIONS = {
    "intent": "intent_agent",
    "response": "response_agent",
    "critic": "critic_agent",
    "escalation": "escalation_agent",
}


async def drain(publisher: RecordingPublisher, settings: Settings, *, limit: int = 500) -> int:
    """Deliver every message not yet delivered (scheduled ones included) to its trigger."""
    functions = app_functions()
    by_queue = {getattr(settings.queues, stage): name for stage, name in QUEUE_FUNCTIONS.items()}
    delivered = 0
    cursor = 0
    while cursor < len(publisher.sent):
        message = publisher.sent[cursor]
        cursor += 1
        if message.queue not in by_queue:
            continue
        await functions[by_queue[message.queue]](service_bus_message(message))
        delivered += 1
        if delivered >= limit:
            raise AssertionError("the pipeline did not settle")
    return delivered
