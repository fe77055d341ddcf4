"""Service Bus over AMQP: the real ``azure-servicebus`` client (sync) against devhost.

Every test drives the SDK through the server and checks the result both as the SDK reports it
and as the broker stores it (the same SQLite file devhost's workers use).
"""

from __future__ import annotations

import datetime
import uuid

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    ServiceBusAuthenticationError,
    ServiceBusError,
    SessionCannotBeLockedError,
)

from tests.integration.amqp.conftest import (
    QUEUE,
    QUEUE_LOCK_S,
    QUEUE_MAX_DELIVERY,
    TOPIC,
    Devhost,
)


def _client(devhost: Devhost) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(devhost.connection_string, retry_total=0)


def test_send_receive_complete_keeps_every_message_property(devhost: Devhost) -> None:
    """Service Bus messages carry a body and system and application properties that arrive
    unchanged; a first delivery has DeliveryCount 0 in the AMQP header and a lock until
    LockedUntilUtc; complete removes the message.
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-messages-payloads,
    https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement)
    """
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(
                ServiceBusMessage(
                    b"\x00body\xff",
                    message_id="m-1",
                    correlation_id="corr-1",
                    subject="greeting",
                    content_type="application/octet-stream",
                    application_properties={"n": 7, "flag": True, "x": 1.5, "s": "text"},
                )
            )
        with client.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert b"".join(message.body) == b"\x00body\xff"
            assert message.message_id == "m-1"
            assert message.correlation_id == "corr-1"
            assert message.subject == "greeting"
            assert message.content_type == "application/octet-stream"
            assert message.application_properties == {
                b"n": 7,
                b"flag": True,
                b"x": 1.5,
                b"s": b"text",
            }
            assert message.delivery_count == 0
            assert message.sequence_number == 1
            assert message.enqueued_time_utc is not None
            assert message.locked_until_utc is not None
            locked_for = message.locked_until_utc - message.enqueued_time_utc
            assert locked_for >= datetime.timedelta(seconds=QUEUE_LOCK_S - 1)
            assert devhost.broker.queue_stats()[QUEUE].locked == 1
            receiver.complete_message(message)
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.locked, stats.completed_total) == (0, 0, 1)


def test_batch_send_is_received_in_order(devhost: Devhost) -> None:
    """A ServiceBusMessageBatch is sent as one transfer and its messages are enqueued in order
    (https://learn.microsoft.com/python/api/azure-servicebus/azure.servicebus.servicebusmessagebatch)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            batch = sender.create_message_batch()
            for i in range(5):
                batch.add_message(ServiceBusMessage(f"item {i}", message_id=f"b-{i}"))
            sender.send_messages(batch)
            sender.send_messages([ServiceBusMessage("list 1"), ServiceBusMessage("list 2")])
        assert devhost.broker.queue_stats()[QUEUE].active == 7
        with client.get_queue_receiver(QUEUE) as receiver:
            got = []
            while len(got) < 7:
                for message in receiver.receive_messages(max_message_count=7, max_wait_time=10):
                    got.append(str(message))
                    receiver.complete_message(message)
    assert got == [f"item {i}" for i in range(5)] + ["list 1", "list 2"]


def test_abandon_redelivers_with_a_higher_delivery_count(devhost: Devhost) -> None:
    """Abandon releases the lock at once; the next delivery's DeliveryCount is one higher
    (https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement#settling-receive-operations)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("again", message_id="a-1"))
        with client.get_queue_receiver(QUEUE) as receiver:
            (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.abandon_message(first)
            (second,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert second.message_id == "a-1"
            assert (first.delivery_count, second.delivery_count) == (0, 1)
            assert second.lock_token != first.lock_token
            receiver.complete_message(second)
    assert devhost.broker.queue_stats()[QUEUE].completed_total == 1


def test_dead_letter_with_reason_is_read_from_the_dead_letter_queue(devhost: Devhost) -> None:
    """Dead-lettering moves the message to the $DeadLetterQueue sub-queue with
    DeadLetterReason and DeadLetterErrorDescription; completing it there removes it
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("poison", message_id="p-1"))
        with client.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.dead_letter_message(message, reason="BadInput", error_description="no")
        (stored,) = devhost.broker.deadletters(QUEUE)
        assert (stored.message_id, stored.reason, stored.description) == ("p-1", "BadInput", "no")
        with client.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            (dead,) = dlq.receive_messages(max_message_count=1, max_wait_time=10)
            assert str(dead) == "poison"
            assert dead.dead_letter_reason == "BadInput"
            assert dead.dead_letter_error_description == "no"
            dlq.complete_message(dead)
    assert devhost.broker.deadletters(QUEUE) == []


def test_max_delivery_count_moves_the_message_to_the_dead_letter_queue(devhost: Devhost) -> None:
    """Once a message has been delivered MaxDeliveryCount times it is dead-lettered with reason
    MaxDeliveryCountExceeded (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues#maximum-delivery-count)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("flaky", message_id="f-1"))
        with client.get_queue_receiver(QUEUE) as receiver:
            for _ in range(QUEUE_MAX_DELIVERY):
                (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
                receiver.abandon_message(message)
        with client.get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            (dead,) = dlq.receive_messages(max_message_count=1, max_wait_time=10)
            assert dead.message_id == "f-1"
            assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
            dlq.complete_message(dead)
    assert devhost.broker.queue_stats()[QUEUE].active == 0


def test_renew_lock_extends_it_by_the_lock_duration(devhost: Devhost) -> None:
    """renew-lock on $management extends the lock by the queue's lock duration and returns the
    new expiry (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response#message-renew-lock)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("long job"))
        with client.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            before = message.locked_until_utc
            assert before is not None
            devhost.clock.advance(20)
            after = receiver.renew_message_lock(message)
            assert after - before >= datetime.timedelta(seconds=19)
            assert message.locked_until_utc == after
            devhost.clock.advance(20)  # past the first lock, inside the renewed one
            receiver.complete_message(message)
    assert devhost.broker.queue_stats()[QUEUE].completed_total == 1


def test_an_expired_lock_cannot_settle_and_the_message_comes_back(devhost: Devhost) -> None:
    """When the lock expires the message becomes available again with a higher delivery count,
    and settling with the old lock fails with MessageLockLost
    (https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement#peeklock)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("slow", message_id="s-1"))
        with client.get_queue_receiver(QUEUE) as receiver:
            (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            devhost.clock.advance(QUEUE_LOCK_S + 1)
            with pytest.raises(MessageLockLostError):
                receiver.complete_message(message)
            (again,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert (again.message_id, again.delivery_count) == ("s-1", 1)
            receiver.complete_message(again)


def test_receive_and_delete_removes_on_delivery(devhost: Devhost) -> None:
    """In ReceiveAndDelete mode the message is deleted as it is delivered; it has no lock
    (https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement#receiveanddelete)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages([ServiceBusMessage(f"r{i}") for i in range(3)])
        mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
        with client.get_queue_receiver(QUEUE, receive_mode=mode) as receiver:
            got: list[str] = []
            while len(got) < 3:
                got += [str(m) for m in receiver.receive_messages(3, max_wait_time=10)]
    assert got == ["r0", "r1", "r2"]
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.locked) == (0, 0)


def test_peek_reads_without_locking(devhost: Devhost) -> None:
    """Peek returns messages from a sequence number on without locking them
    (https://learn.microsoft.com/azure/service-bus-messaging/message-browsing)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages([ServiceBusMessage(f"p{i}") for i in range(4)])
        with client.get_queue_receiver(QUEUE) as receiver:
            peeked = receiver.peek_messages(max_message_count=10)
            assert [str(m) for m in peeked] == ["p0", "p1", "p2", "p3"]
            assert [m.sequence_number for m in peeked] == [1, 2, 3, 4]
            later = receiver.peek_messages(max_message_count=2, sequence_number=3)
            assert [m.sequence_number for m in later] == [3, 4]
            assert devhost.broker.queue_stats()[QUEUE].locked == 0
            with pytest.raises(ValueError, match="peek"):
                receiver.complete_message(peeked[0])


def test_scheduled_message_is_delivered_at_its_time(devhost: Devhost) -> None:
    """A message with ScheduledEnqueueTimeUtc is not visible until then
    (https://learn.microsoft.com/azure/service-bus-messaging/message-sequencing#scheduled-messages)."""
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            message = ServiceBusMessage("later", message_id="later-1")
            message.scheduled_enqueue_time_utc = at
            sender.send_messages(message)
        stats = devhost.broker.queue_stats()[QUEUE]
        assert (stats.active, stats.scheduled) == (0, 1)
        with client.get_queue_receiver(QUEUE) as receiver:
            assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
            devhost.clock.advance(3601)
            (due,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert due.message_id == "later-1"
            assert due.scheduled_enqueue_time_utc is not None
            assert abs((due.scheduled_enqueue_time_utc - at).total_seconds()) < 0.01
            receiver.complete_message(due)


def test_duplicate_message_id_is_dropped(devhost: Devhost) -> None:
    """With duplicate detection a message whose MessageId was sent within the window is
    accepted and dropped (https://learn.microsoft.com/azure/service-bus-messaging/duplicate-detection)."""
    with _client(devhost) as client, client.get_queue_sender(QUEUE, keep_alive=None) as sender:
        sender.send_messages(ServiceBusMessage("once", message_id="dup-1"))
        sender.send_messages(ServiceBusMessage("twice", message_id="dup-1"))
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.duplicates_total) == (1, 1)
    (kept,) = devhost.broker.peek(QUEUE)
    assert kept.body == b"once"


def test_a_message_over_256_kb_is_refused_with_message_size_exceeded(devhost: Devhost) -> None:
    """Standard tier messages are at most 256 KB; the link advertises the limit and a larger
    message fails with MessageSizeExceeded (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-quotas)."""
    with _client(devhost) as client, client.get_queue_sender(QUEUE, keep_alive=None) as sender:
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage(b"x" * (300 * 1024)))
        sender.send_messages(ServiceBusMessage(b"x" * (200 * 1024)))
    assert devhost.broker.queue_stats()[QUEUE].active == 1


def test_sessions_are_refused_clearly(devhost: Devhost) -> None:
    """devhost's queues and subscriptions do not require sessions. A session receiver on such an
    entity is refused the way Service Bus refuses it: ``amqp:not-allowed``, "A sessionful
    message receiver cannot be created on an entity that does not require sessions", which the
    SDK does not retry (https://learn.microsoft.com/azure/service-bus-messaging/message-sessions:
    sessions need RequiresSession on the entity). Service Bus would keep a session id sent to such
    an entity; devhost cannot store one, so that send is refused (``amqp:not-implemented``)
    rather than the id lost, and nothing is enqueued."""
    with _client(devhost) as client:
        with (
            client.get_queue_sender(QUEUE, keep_alive=None) as sender,
            pytest.raises(ServiceBusError) as sent,
        ):
            sender.send_messages(ServiceBusMessage("s", session_id="session-1"))
        assert "amqp:not-implemented" in str(sent.value)
        assert "session id" in str(sent.value)
        receivers = (
            client.get_queue_receiver(QUEUE, session_id="session-1"),
            client.get_queue_receiver(QUEUE, session_id=NEXT_AVAILABLE_SESSION),
            client.get_subscription_receiver(TOPIC, "all", session_id="session-1"),
        )
        for receiver in receivers:
            with pytest.raises(ServiceBusError) as received, receiver:
                receiver.receive_messages(max_message_count=1, max_wait_time=1)
            assert "amqp:not-allowed" in str(received.value)
            assert "does not require sessions" in str(received.value)
            assert not isinstance(received.value, SessionCannotBeLockedError)
    assert devhost.broker.queue_stats()[QUEUE].sent_total == 0


def test_an_unknown_queue_is_not_found(devhost: Devhost) -> None:
    """A token for an entity that does not exist is answered 404 (entity not found), which the
    SDK raises as an authentication failure on send
    (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization)."""
    with (
        _client(devhost) as client,
        pytest.raises(ServiceBusAuthenticationError) as error,
        client.get_queue_sender("nosuchqueue") as sender,
    ):
        sender.send_messages(ServiceBusMessage("lost"))
    causes = []
    cause: BaseException | None = error.value
    while cause is not None:
        causes.append(repr(cause))
        cause = cause.__cause__ or cause.__context__
    assert any("404" in text and "nosuchqueue" in text for text in causes), causes


def test_devhost_workers_and_sdk_clients_share_the_queue(devhost: Devhost) -> None:
    """What another process sends through the broker is received with the SDK, and what the
    SDK sends is received by the broker's own receivers (devhost's workers)."""
    worker = devhost.other_process()
    try:
        worker.send(QUEUE, b"from a worker", message_id="w-1", subject="s")
        with _client(devhost) as client:
            with client.get_queue_receiver(QUEUE) as receiver:
                (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
                assert (str(message), message.subject) == ("from a worker", "s")
                receiver.complete_message(message)
            with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
                sender.send_messages(ServiceBusMessage(b"from the sdk", message_id="sdk-1"))
        (received,) = worker.receive(QUEUE, max_messages=5, owner="worker")
        assert (received.message_id, received.body) == ("sdk-1", b"from the sdk")
        worker.complete(QUEUE, received.lock_token)
    finally:
        worker.close()


def test_many_messages_round_trip_without_loss(devhost: Devhost) -> None:
    """Every message sent is received exactly once when each is completed."""
    ids = [str(uuid.uuid4()) for _ in range(300)]
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            for start in range(0, len(ids), 100):
                sender.send_messages(
                    [ServiceBusMessage(i, message_id=i) for i in ids[start : start + 100]]
                )
        seen: list[str] = []
        with client.get_queue_receiver(QUEUE, prefetch_count=50) as receiver:
            while len(seen) < len(ids):
                batch = receiver.receive_messages(max_message_count=100, max_wait_time=10)
                assert batch, "the receiver stopped getting messages"
                for message in batch:
                    seen.append(str(message.message_id))
                    receiver.complete_message(message)
    assert seen == ids
    assert devhost.broker.queue_stats()[QUEUE].completed_total == len(ids)


def test_deferred_message_is_received_by_sequence_number(devhost: Devhost) -> None:
    """A deferred message stays in the queue but is only delivered when asked for by its
    sequence number; it is then settled like any other
    (https://learn.microsoft.com/azure/service-bus-messaging/message-deferral)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages([ServiceBusMessage("defer me"), ServiceBusMessage("next")])
        with client.get_queue_receiver(QUEUE) as receiver:
            (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.defer_message(first)
            (second,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert str(second) == "next"
            receiver.complete_message(second)
            assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
            assert [m.sequence_number for m in receiver.peek_messages(5, sequence_number=1)] == [
                first.sequence_number
            ]
            (deferred,) = receiver.receive_deferred_messages([first.sequence_number])
            assert (str(deferred), deferred.delivery_count) == ("defer me", 1)
            receiver.complete_message(deferred)
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled, stats.locked, stats.completed_total) == (0, 0, 0, 2)


def test_a_deferred_message_is_dead_lettered_with_its_reason(devhost: Devhost) -> None:
    """A message received by sequence number is settled over the management link
    (update-disposition); dead-lettering it keeps the reason and description given
    (https://learn.microsoft.com/azure/service-bus-messaging/message-deferral;
    https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(ServiceBusMessage("defer me"))
        with client.get_queue_receiver(QUEUE) as receiver:
            (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.defer_message(first)
            (deferred,) = receiver.receive_deferred_messages([first.sequence_number])
            receiver.dead_letter_message(deferred, reason="Stale", error_description="too old")
    (dead,) = devhost.broker.deadletters(QUEUE)
    assert (dead.message_id, dead.reason, dead.description) == (
        str(first.message_id),
        "Stale",
        "too old",
    )


def test_schedule_messages_returns_sequence_numbers_and_cancel_removes(devhost: Devhost) -> None:
    """schedule_messages answers with the sequence numbers of the scheduled messages, and
    cancel_scheduled_messages removes them before they are due
    (https://learn.microsoft.com/azure/service-bus-messaging/message-sequencing#scheduled-messages)."""
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            numbers = sender.schedule_messages(
                [ServiceBusMessage("keep"), ServiceBusMessage("cancel")], at
            )
            assert numbers == [1, 2]
            sender.cancel_scheduled_messages(numbers[1])
        assert devhost.broker.queue_stats()[QUEUE].scheduled == 1
        devhost.clock.advance(301)
        with client.get_queue_receiver(QUEUE) as receiver:
            (due,) = receiver.receive_messages(max_message_count=5, max_wait_time=10)
            assert (str(due), due.sequence_number) == ("keep", 1)
            receiver.complete_message(due)
            assert receiver.receive_messages(max_message_count=5, max_wait_time=1) == []


def test_time_to_live_expires_undelivered_messages(devhost: Devhost) -> None:
    """A message whose TimeToLive passes before it is received is removed, never delivered;
    a received message reports its TimeToLive
    (https://learn.microsoft.com/azure/service-bus-messaging/message-expiration)."""
    with _client(devhost) as client:
        with client.get_queue_sender(QUEUE, keep_alive=None) as sender:
            sender.send_messages(
                [
                    ServiceBusMessage("short", time_to_live=datetime.timedelta(seconds=30)),
                    ServiceBusMessage("long", time_to_live=datetime.timedelta(hours=1)),
                ]
            )
        devhost.clock.advance(60)
        with client.get_queue_receiver(QUEUE) as receiver:
            got = receiver.receive_messages(max_message_count=5, max_wait_time=10)
            assert [str(m) for m in got] == ["long"]
            assert got[0].time_to_live == datetime.timedelta(hours=1)
            receiver.complete_message(got[0])
    stats = devhost.broker.queue_stats()[QUEUE]
    assert (stats.active, stats.completed_total) == (0, 1)


def test_topic_fans_out_to_matching_subscriptions(devhost: Devhost) -> None:
    """A message sent to a topic is delivered to every subscription whose rule matches (a
    correlation filter on the subject; no rule takes everything), each settled on its own
    (https://learn.microsoft.com/azure/service-bus-messaging/topic-filters#correlation-filters)."""
    with _client(devhost) as client:
        with client.get_topic_sender(TOPIC, keep_alive=None) as sender:
            sender.send_messages(
                [
                    ServiceBusMessage("fire", subject="urgent", message_id="n-1"),
                    ServiceBusMessage("lunch", subject="info", message_id="n-2"),
                ]
            )
        got: dict[str, list[str]] = {}
        for name in ("all", "urgent"):
            with client.get_subscription_receiver(TOPIC, name) as receiver:
                messages: list[str] = []
                while len(messages) < (2 if name == "all" else 1):
                    for message in receiver.receive_messages(5, max_wait_time=10):
                        messages.append(str(message))
                        receiver.complete_message(message)
                got[name] = messages
                assert receiver.receive_messages(5, max_wait_time=1) == []
    assert got == {"all": ["fire", "lunch"], "urgent": ["fire"]}
    assert devhost.broker.topic_totals(TOPIC) == (2, 0)
