"""Switchboard's own Azure adapters through the SDKs against devhost's AMQP endpoint.

The adapters build their SDK clients from a namespace and a credential (production uses a
managed identity). Here the credential is the emulator's key and the client is the SDK's own,
given ``use_tls=False`` exactly as an emulator connection string makes it; and the composition
root builds them from settings holding devhost's emulator connection string, as a developer's
``local.settings.json`` does.
"""

from __future__ import annotations

import datetime
import json

import pytest
from azure.core.credentials import AzureNamedKeyCredential

import shared.adapters.azure.eventhub_producer as eventhub_producer
import shared.adapters.azure.servicebus_publisher as servicebus_publisher
from devhost.amqp import EMULATOR_KEY, EMULATOR_KEY_NAME
from devhost.broker import partition_for_key
from shared import bootstrap
from shared.config import Settings
from shared.errors import ConfigError
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


def _settings_with(connection_string: str) -> Settings:
    """The app's settings as ``local.settings.json`` gives them for devhost's AMQP endpoint:
    both connections set to the emulator string, the identity settings of the sample kept (the
    exact setting must win over them, as in the Functions extensions)."""
    return bootstrap.load_settings(
        {
            "ServiceBusConnection": connection_string,
            "ServiceBusConnection__fullyQualifiedNamespace": "unused.servicebus.windows.net",
            "EventHubConnection": connection_string,
            "EventHubConnection__fullyQualifiedNamespace": "unused.servicebus.windows.net",
            "EVENTHUB_NAME": HUB,
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "AZURE_OPENAI_API_KEY": "unused",
        }
    )


async def test_the_composition_root_publishes_by_the_emulator_connection_string(
    devhost: Devhost,
) -> None:
    """``build_publisher`` reads ``ServiceBusConnection`` as a connection string (Azure Service
    Bus trigger for Azure Functions, "Connections": a setting named exactly after the connection
    holds a connection string; https://learn.microsoft.com/azure/azure-functions/
    functions-bindings-service-bus-trigger#connections) and, for ``UseDevelopmentEmulator=true``,
    speaks plain AMQP: the message lands in devhost's broker."""
    settings = _settings_with(devhost.connection_string)
    assert "SharedAccessKey=" not in repr(settings)  # the string is a Secret
    publisher = bootstrap.build_publisher(settings)
    try:
        await publisher.send(
            OutboundMessage(
                queue="intent",
                body=b'{"conversationId":"c-9"}',
                message_id="c-9:intent:1",
                correlation_id="c-9",
            )
        )
    finally:
        await publisher.close()
    (received,) = devhost.broker.receive("intent", max_messages=5)
    assert (received.message_id, received.correlation_id) == ("c-9:intent:1", "c-9")
    assert json.loads(received.body) == {"conversationId": "c-9"}


async def test_the_composition_root_produces_events_by_the_emulator_connection_string(
    devhost: Devhost,
) -> None:
    """The request producer (for load generators and gateways, not part of the Function App, so
    not built by the composition root) reads ``EventHubConnection`` from the same settings the
    same way (Azure Event Hubs trigger for Azure Functions, "Connections"): the request reaches
    devhost's hub on its customer's partition."""
    settings = _settings_with(devhost.connection_string)
    producer = eventhub_producer.EventHubRequestProducer.from_settings(settings)
    try:
        sent = await producer.send_requests([{"customerId": "cust-9", "text": "hello"}])
    finally:
        await producer.close()
    assert sent == 1
    partition = partition_for_key("cust-9", HUB_PARTITIONS)
    (event,) = devhost.broker.read_partition(HUB, partition, after_sequence=-1, max_events=10)
    assert event.partition_key == "cust-9"
    assert json.loads(event.body) == {"customerId": "cust-9", "text": "hello"}


async def test_a_hub_scoped_connection_string_must_name_the_configured_hub(
    devhost: Devhost,
) -> None:
    """An Event Hubs connection string may carry ``EntityPath``; one for another hub than
    ``EVENTHUB_NAME`` is refused by name before anything connects."""
    settings = _settings_with(devhost.server.connection_string(entity="other"))
    with pytest.raises(ConfigError) as caught:
        eventhub_producer.EventHubRequestProducer.from_settings(settings)
    assert caught.value.setting == "EventHubConnection"
    assert "other" in caught.value.problem
