"""Switchboard's own Azure adapters through the SDKs against devhost's AMQP endpoint.

The adapters build their SDK clients from a namespace and a credential (production uses a
managed identity). Here the credential is the emulator's key and the client is the SDK's own,
given ``use_tls=False`` exactly as an emulator connection string makes it.
"""

from __future__ import annotations

import datetime
import json

from azure.core.credentials import AzureNamedKeyCredential

import shared.adapters.azure.eventhub_producer as eventhub_producer
import shared.adapters.azure.servicebus_publisher as servicebus_publisher
from devhost.amqp import EMULATOR_KEY, EMULATOR_KEY_NAME
from devhost.broker import partition_for_key
from shared.ports import OutboundMessage
from tests.integration.amqp.conftest import HUB, HUB_PARTITIONS, Devhost

KEY = AzureNamedKeyCredential(EMULATOR_KEY_NAME, EMULATOR_KEY)


async def test_servicebus_publisher_sends_what_the_pipeline_relies_on(devhost: Devhost) -> None:
    """ServiceBusPublisher's messages arrive with their id, correlation id, subject, content
    type and application properties; a scheduled one waits; a re-sent id is dropped."""
    publisher = servicebus_publisher.ServiceBusPublisher(
        devhost.namespace, credential=KEY, use_tls=False
    )
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)
    message = OutboundMessage(
        queue="intent",
        body=b'{"conversationId":"c-1"}',
        message_id="c-1:intent:1",
        correlation_id="c-1",
        subject="intent",
        application_properties={"stage": "intent", "attempt": 1},
    )
    try:
        await publisher.send(message)
        await publisher.send(message)  # a redelivered stage re-sends under the same id
        await publisher.send(
            OutboundMessage(
                queue="intent",
                body=b"{}",
                message_id="c-1:intent:retry",
                correlation_id="c-1",
                scheduled_enqueue_time=later,
            )
        )
    finally:
        await publisher.close()
    stats = devhost.broker.queue_stats()["intent"]
    assert (stats.active, stats.scheduled, stats.duplicates_total) == (1, 1, 1)
    (received,) = devhost.broker.receive("intent", max_messages=5)
    assert (received.message_id, received.correlation_id, received.subject) == (
        "c-1:intent:1",
        "c-1",
        "intent",
    )
    assert received.content_type == "application/json"
    assert received.application_properties == {"stage": "intent", "attempt": 1}
    assert json.loads(received.body) == {"conversationId": "c-1"}


async def test_eventhub_producer_keeps_a_customer_on_one_partition(devhost: Devhost) -> None:
    """EventHubRequestProducer sends each request as JSON under its customer's partition key,
    so one customer's requests stay in order on one partition."""
    producer = eventhub_producer.EventHubRequestProducer(
        devhost.namespace, HUB, credential=KEY, use_tls=False
    )
    requests = [
        {"customerId": "cust-1", "text": f"question {i}", "channel": "chat"} for i in range(3)
    ] + [{"customerId": "cust-2", "text": "other", "channel": "email"}]
    try:
        assert await producer.send_requests(requests) == 4
    finally:
        await producer.close()
    partition = partition_for_key("cust-1", HUB_PARTITIONS)
    events = devhost.broker.read_partition(HUB, partition, after_sequence=-1, max_events=10)
    mine = [json.loads(e.body)["text"] for e in events if e.partition_key == "cust-1"]
    assert mine == ["question 0", "question 1", "question 2"]
    total = sum(s.last_sequence + 1 for s in devhost.broker.hub_stats(HUB, "$Default").values())
    assert total == 4
