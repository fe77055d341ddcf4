"""Drive the real Function App in-process: build the binding types the Functions host would
build from queued messages and call the decorated functions until the queues are quiet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage

from devhost import bindings
from devhost.broker import ReceivedMessage, StoredEvent
from devhost.broker.values import PropertyValue
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
    """Each function of the app, taking its trigger's value and called as the worker calls it
    (keyword arguments, and a ``func.Context`` for a ``context`` parameter)."""
    functions: dict[str, UserFunction] = {}
    for f in indexed():
        name = f.get_function_name()
        trigger = next(
            b
            for b in json.loads(f.get_function_json())["bindings"]
            if str(b.get("type", "")).endswith("Trigger")
        )
        functions[name] = bindings.as_the_worker_calls(
            f.get_user_function(), trigger_name=str(trigger["name"]), function_name=name
        )
    return functions


def service_bus_message(message: OutboundMessage, *, delivery_count: int = 1) -> ServiceBusMessage:
    """``message`` as a Service Bus trigger receives it on Azure: the host's binding data,
    decoded by ``azure.functions``' converter (see ``devhost.bindings``)."""
    now = time.time()
    scheduled = message.scheduled_enqueue_time
    received = ReceivedMessage(
        queue=message.queue,
        message_id=message.message_id,
        body=message.body,
        correlation_id=message.correlation_id,
        subject=message.subject or None,
        content_type=message.content_type,
        application_properties=dict(message.application_properties),
        delivery_count=delivery_count,
        enqueued_time=now,
        sequence_number=1,
        lock_token="00000000-0000-0000-0000-000000000000",
        locked_until=now + 60,
        scheduled_enqueue_time=scheduled.timestamp() if scheduled else None,
    )
    return bindings.service_bus_message(received)


def stored_event(
    body: bytes,
    *,
    partition: int = 0,
    sequence: int = 1,
    properties: dict[str, PropertyValue] | None = None,
    hub: str = "requests",
) -> StoredEvent:
    """An event as devhost's broker reads it back (offset ``sequence * 100``)."""
    return StoredEvent(
        hub=hub,
        partition_id=partition,
        sequence_number=sequence,
        offset=str(sequence * 100),
        body=body,
        partition_key=None,
        properties=dict(properties or {}),
        enqueued_time=time.time(),
    )


def hub_batch(events: list[StoredEvent], *, consumer_group: str = "switchboard") -> list[Any]:
    """A cardinality-many batch as the ingest trigger receives it on Azure."""
    return bindings.event_hub_events(events, consumer_group=consumer_group)


def hub_event(body: bytes, *, partition: str = "0", sequence: int = 1) -> func.EventHubEvent:
    """One event, delivered as a batch of one."""
    return hub_batch([stored_event(body, partition=int(partition), sequence=sequence)])[0]


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
