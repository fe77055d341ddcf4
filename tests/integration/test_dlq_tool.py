"""``python -m infra.dlq`` (the dead-letter tool for Azure) against devhost's AMQP endpoint.

The tool speaks to Service Bus only through the ``azure-servicebus`` SDK, so devhost's AMQP
server stands in for a namespace: dead letters are made the two ways Azure makes them - the
broker's own ``$DeadLetterQueue`` with ``DeadLetterReason``/``DeadLetterErrorDescription``
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues) and
the pipeline's parking queue (``shared/service/core.py`` ``dead_letter``) - then listed and
replayed with the tool's own command line. A SAS connection string replaces
``DefaultAzureCredential`` here, the one difference from a run against Azure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from infra import dlq
from tests.integration.amqp.conftest import Devhost, start_devhost

QUEUES = dlq.Queues.from_names()


@pytest.fixture
def devhost(tmp_path: Path) -> Iterator[Devhost]:
    host = start_devhost(tmp_path)
    for name in (*QUEUES.stages, QUEUES.parking):
        host.broker.ensure_queue(name, lock_duration_s=60.0, duplicate_window_s=600.0)
    try:
        yield host
    finally:
        host.server.stop()
        host.broker.close()


def run(devhost: Devhost, *args: str) -> Any:
    out = io.StringIO()
    code = dlq.main(["--connection-string", devhost.connection_string, "--json", *args], out=out)
    assert code == 0
    return json.loads(out.getvalue())


def make_dead_letters(devhost: Devhost) -> None:
    """One message dead-lettered by the broker on ``response``, one parked from ``critic``."""
    with ServiceBusClient.from_connection_string(devhost.connection_string) as client:
        with client.get_queue_sender("response") as sender:
            sender.send_messages(
                ServiceBusMessage(
                    b'{"stage":"response"}',
                    message_id="msg-response-1",
                    correlation_id="c-1",
                    application_properties={
                        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
                    },
                )
            )
        with client.get_queue_receiver("response") as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.dead_letter_message(
                message, reason="MaxDeliveryCountExceeded", error_description="10 deliveries"
            )
        with client.get_queue_sender(QUEUES.parking) as sender:
            sender.send_messages(
                ServiceBusMessage(
                    b'{"stage":"critic"}',
                    message_id="dl-0123",
                    correlation_id="c-2",
                    subject="deadletter",
                    application_properties={
                        "DeadLetterReason": "invalid_message",
                        "DeadLetterErrorDescription": "envelope version 9 is not supported",
                        "OriginalQueue": "critic",
                        "OriginalMessageId": "msg-critic-7",
                        "DeadLetteredAt": "2026-12-06T21:00:00+00:00",
                    },
                )
            )


def test_list_shows_both_kinds_of_dead_letter_with_their_reasons(devhost: Devhost) -> None:
    make_dead_letters(devhost)
    listed = run(devhost, "list")
    by_id = {e["originalMessageId"]: e for e in listed}
    assert set(by_id) == {"msg-response-1", "msg-critic-7"}
    assert by_id["msg-response-1"]["heldIn"] == "response/$DeadLetterQueue"
    assert by_id["msg-response-1"]["reason"] == "MaxDeliveryCountExceeded"
    assert by_id["msg-response-1"]["description"] == "10 deliveries"
    assert by_id["msg-critic-7"]["heldIn"] == QUEUES.parking
    assert by_id["msg-critic-7"]["queue"] == "critic"
    assert by_id["msg-critic-7"]["reason"] == "invalid_message"
    # Listing peeks: nothing was locked or moved.
    assert run(devhost, "list") == listed


def test_replay_sends_each_back_to_its_queue_once(devhost: Devhost) -> None:
    make_dead_letters(devhost)
    listed = {e["originalMessageId"]: e for e in run(devhost, "list")}
    replayed = run(devhost, "replay")
    assert {e["originalMessageId"] for e in replayed} == {"msg-response-1", "msg-critic-7"}
    assert run(devhost, "list") == []

    with ServiceBusClient.from_connection_string(devhost.connection_string) as client:
        for queue, original, body in (
            ("response", "msg-response-1", b'{"stage":"response"}'),
            ("critic", "msg-critic-7", b'{"stage":"critic"}'),
        ):
            with client.get_queue_receiver(queue) as receiver:
                (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
                seq = listed[original]["sequenceNumber"]
                assert message.message_id == f"{original}:replay:{seq}"
                assert b"".join(message.body) == body
                props = dlq.properties_of(message)
                assert props["OriginalMessageId"] == original
                assert not dlq.PARKING_PROPERTIES & set(props)
                receiver.complete_message(message)
        # The broker-set properties of the first survive, the trace context among them.
        assert run(devhost, "replay") == []


def test_replay_by_queue_and_id_leaves_the_others(devhost: Devhost) -> None:
    make_dead_letters(devhost)
    replayed = run(devhost, "replay", "--queue", "critic", "--id", "msg-critic-7")
    assert [e["originalMessageId"] for e in replayed] == ["msg-critic-7"]
    left = run(devhost, "list")
    assert [e["originalMessageId"] for e in left] == ["msg-response-1"]
    with (
        ServiceBusClient.from_connection_string(devhost.connection_string) as client,
        client.get_queue_receiver("response", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead,
    ):
        (still,) = dead.peek_messages(max_message_count=5)
        assert still.message_id == "msg-response-1"


def test_replay_id_replaces_an_earlier_suffix_and_fits_service_bus() -> None:
    """A message id is at most 128 characters: "Service Bus quotas", "Maximum size of a message
    ID" (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-quotas)."""
    assert dlq.replay_id("m-1", 7) == "m-1:replay:7"
    assert dlq.replay_id("m-1:replay:7", 9) == "m-1:replay:9"
    assert len(dlq.replay_id("x" * 200, 12345)) == 128
