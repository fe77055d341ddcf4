"""Service Bus over AMQP with the asyncio client (``azure.servicebus.aio``) against devhost."""

from __future__ import annotations

import datetime

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError

from tests.integration.amqp.conftest import QUEUE, Devhost


async def test_async_settlements_each_do_what_service_bus_documents(devhost: Devhost) -> None:
    """Complete removes, abandon redelivers with a higher count, dead-letter moves to the
    $DeadLetterQueue with the reason, renew-lock extends the lock, peek reads without a lock
    (https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement,
    https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues)."""
    async with ServiceBusClient.from_connection_string(
        devhost.connection_string, retry_total=0
    ) as client:
        async with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            batch = await sender.create_message_batch()
            for name in ("complete", "abandon", "dead-letter", "renew"):
                batch.add_message(ServiceBusMessage(name, message_id=name))
            await sender.send_messages(batch)
        async with client.get_queue_receiver(QUEUE) as receiver:
            peeked = await receiver.peek_messages(max_message_count=10)
            assert [m.message_id for m in peeked] == ["complete", "abandon", "dead-letter", "renew"]
            assert devhost.broker.queue_stats()[QUEUE].locked == 0
            got = {}
            while len(got) < 4:
                for message in await receiver.receive_messages(4, max_wait_time=10):
                    got[message.message_id] = message
            await receiver.complete_message(got["complete"])
            await receiver.abandon_message(got["abandon"])
            await receiver.dead_letter_message(
                got["dead-letter"], reason="Nope", error_description="d"
            )
            before = got["renew"].locked_until_utc
            devhost.clock.advance(10)
            renewed = await receiver.renew_message_lock(got["renew"])
            assert before is not None
            assert renewed - before >= datetime.timedelta(seconds=9)
            await receiver.complete_message(got["renew"])
            (again,) = await receiver.receive_messages(1, max_wait_time=10)
            assert (again.message_id, again.delivery_count) == ("abandon", 1)
            await receiver.complete_message(again)
        async with client.get_queue_receiver(
            QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            (dead,) = await dlq.receive_messages(1, max_wait_time=10)
            assert (dead.message_id, dead.dead_letter_reason) == ("dead-letter", "Nope")
            await dlq.complete_message(dead)
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.locked, stats.deadlettered, stats.completed_total) == (0, 0, 0, 3)


async def test_async_receive_and_delete_and_scheduled_send(devhost: Devhost) -> None:
    """ReceiveAndDelete removes on delivery; a scheduled message waits for its time
    (https://learn.microsoft.com/azure/service-bus-messaging/message-sequencing#scheduled-messages)."""
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    async with ServiceBusClient.from_connection_string(
        devhost.connection_string, retry_total=0
    ) as client:
        async with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            await sender.send_messages(ServiceBusMessage("now"))
            later = ServiceBusMessage("later")
            later.scheduled_enqueue_time_utc = at
            await sender.send_messages(later)
        mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
        async with client.get_queue_receiver(QUEUE, receive_mode=mode) as receiver:
            (now,) = await receiver.receive_messages(5, max_wait_time=10)
            assert str(now) == "now"
            assert devhost.broker.queue_stats()[QUEUE].scheduled == 1
            devhost.clock.advance(601)
            (due,) = await receiver.receive_messages(5, max_wait_time=10)
            assert str(due) == "later"
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled, stats.locked) == (0, 0, 0)


async def test_async_session_receiver_is_not_allowed_on_a_queue_without_sessions(
    devhost: Devhost,
) -> None:
    """The asyncio client gets Service Bus's answer for a session receiver on an entity that
    does not require sessions: ``amqp:not-allowed``, not retried
    (https://learn.microsoft.com/azure/service-bus-messaging/message-sessions)."""
    async with ServiceBusClient.from_connection_string(
        devhost.connection_string, retry_total=0
    ) as client:
        receiver = client.get_queue_receiver(QUEUE, session_id="s-1")
        with pytest.raises(ServiceBusError) as refused:
            async with receiver:
                await receiver.receive_messages(1, max_wait_time=1)
    assert "amqp:not-allowed" in str(refused.value)
    assert "does not require sessions" in str(refused.value)
