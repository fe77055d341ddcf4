"""The devhost broker's Service Bus queue semantics on a real SQLite file and a hand-moved clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.broker import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    Broker,
    BrokerError,
    LockLost,
    MessageTooLarge,
    SendSpec,
    UnknownQueue,
    replay_id,
)
from shared.errors import TransientError
from tests.support.clock import FakeClock

QUEUE = "intent"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.db", clock=clock) as opened:
        opened.ensure_queue(
            QUEUE, lock_duration_s=30.0, max_delivery_count=3, duplicate_window_s=600.0
        )
        yield opened


def test_a_sent_message_is_received_with_its_properties_and_a_lock(
    broker: Broker, clock: FakeClock
) -> None:
    assert broker.send(
        QUEUE,
        b'{"hello": 1}',
        message_id="m-1",
        correlation_id="conv-1",
        subject="intent",
        content_type="application/json",
        application_properties={"traceparent": "00-abc-def-01", "revision": 2, "vip": True},
    )
    [message] = broker.receive(QUEUE, owner="worker-1")
    assert message.body == b'{"hello": 1}'
    assert (message.message_id, message.correlation_id, message.subject) == (
        "m-1",
        "conv-1",
        "intent",
    )
    assert message.content_type == "application/json"
    assert message.application_properties == {
        "traceparent": "00-abc-def-01",
        "revision": 2,
        "vip": True,
    }
    assert message.delivery_count == 1
    assert message.enqueued_time == clock.now
    assert message.locked_until == clock.now + 30.0
    assert broker.receive(QUEUE) == []  # locked: invisible to other receivers


def test_messages_are_delivered_in_fifo_order(broker: Broker) -> None:
    ids = [f"m-{n}" for n in range(25)]
    for message_id in ids:
        broker.send(QUEUE, message_id.encode(), message_id=message_id)
    first = broker.receive(QUEUE, max_messages=10)
    rest = broker.receive(QUEUE, max_messages=100)
    received = [m.message_id for m in first + rest]
    assert received == ids
    sequence_numbers = [m.sequence_number for m in first + rest]
    assert sequence_numbers == sorted(sequence_numbers)


def test_an_expired_lock_redelivers_with_the_delivery_count_incremented(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [first] = broker.receive(QUEUE)
    clock.advance(29.9)
    assert broker.receive(QUEUE) == []
    clock.advance(0.2)
    [second] = broker.receive(QUEUE)
    assert second.message_id == "m-1"
    assert second.delivery_count == first.delivery_count + 1
    assert second.lock_token != first.lock_token


def test_abandon_releases_the_lock_and_the_next_delivery_counts_one_more(
    broker: Broker,
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [first] = broker.receive(QUEUE)
    broker.abandon(QUEUE, first.lock_token, reason="boom")
    [second] = broker.receive(QUEUE)  # at once: no need to wait for the lock to expire
    assert second.delivery_count == first.delivery_count + 1
    with pytest.raises(LockLost):
        broker.complete(QUEUE, first.lock_token)


def test_peek_reports_past_deliveries_while_receive_counts_the_one_it_makes(
    broker: Broker,
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [never_delivered] = broker.peek(QUEUE)
    assert never_delivered.delivery_count == 0
    assert never_delivered.lock_token == ""

    [first] = broker.receive(QUEUE)
    assert first.delivery_count == 1
    [locked] = broker.peek(QUEUE)
    assert locked.delivery_count == 1  # the delivery in progress, not one more
    broker.abandon(QUEUE, first.lock_token)
    [abandoned] = broker.peek(QUEUE)
    assert abandoned.delivery_count == 1
    [second] = broker.receive(QUEUE)
    assert second.delivery_count == 2


def test_abandoning_the_last_allowed_delivery_dead_letters_with_the_reason_and_body(
    broker: Broker,
) -> None:
    broker.send(QUEUE, b"\x00body\xff", message_id="m-1", application_properties={"a": "b"})
    for attempt in range(1, 4):
        [message] = broker.receive(QUEUE)
        assert message.delivery_count == attempt
        broker.abandon(QUEUE, message.lock_token, reason=f"ValueError on attempt {attempt}")
    assert broker.receive(QUEUE) == []
    [dead] = broker.deadletters(QUEUE)
    assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.description == "ValueError on attempt 3"
    assert dead.body == b"\x00body\xff"
    assert dead.application_properties == {"a": "b"}
    assert dead.delivery_count == 3
    assert broker.queue_stats()[QUEUE].deadlettered == 1


def test_a_message_whose_locks_keep_expiring_is_dead_lettered_instead_of_redelivered(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"slow", message_id="m-1")
    broker.send(QUEUE, b"next", message_id="m-2")
    for _ in range(3):
        [message] = broker.receive(QUEUE)
        assert message.message_id == "m-1"
        clock.advance(31)  # the worker died holding the lock
    [message] = broker.receive(QUEUE)
    assert message.message_id == "m-2"  # m-1 went to the DLQ rather than a fourth delivery
    [dead] = broker.deadletters(QUEUE)
    assert (dead.message_id, dead.reason, dead.delivery_count) == (
        "m-1",
        MAX_DELIVERY_COUNT_EXCEEDED,
        3,
    )
    assert dead.body == b"slow"


def test_dead_letter_keeps_the_given_reason_and_description(broker: Broker) -> None:
    broker.send(QUEUE, b"bad", message_id="m-1")
    [message] = broker.receive(QUEUE)
    broker.dead_letter(QUEUE, message.lock_token, reason="InvalidInput", description="text: blank")
    [dead] = broker.deadletters(QUEUE)
    assert (dead.reason, dead.description, dead.body) == ("InvalidInput", "text: blank", b"bad")
    with pytest.raises(LockLost):
        broker.complete(QUEUE, message.lock_token)


def test_a_scheduled_message_is_invisible_before_its_time_and_visible_after(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"later", message_id="m-1", scheduled_enqueue_time=clock.now + 60)
    assert broker.receive(QUEUE) == []
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled) == (0, 1)
    clock.advance(59.5)
    assert broker.receive(QUEUE) == []
    clock.advance(0.5)
    assert broker.queue_stats()[QUEUE].active == 1
    [message] = broker.receive(QUEUE)
    assert message.scheduled_enqueue_time == clock.now
    assert message.delivery_count == 1


def test_a_duplicate_message_id_within_the_window_is_dropped_and_accepted_after_it(
    broker: Broker, clock: FakeClock
) -> None:
    assert broker.send(QUEUE, b"one", message_id="m-1") is True
    [message] = broker.receive(QUEUE)
    broker.complete(QUEUE, message.lock_token)
    clock.advance(599)
    assert broker.send(QUEUE, b"two", message_id="m-1") is False  # even though completed
    assert broker.receive(QUEUE) == []
    clock.advance(2)
    assert broker.send(QUEUE, b"three", message_id="m-1") is True
    [again] = broker.receive(QUEUE)
    assert again.body == b"three"
    stats = broker.queue_stats()[QUEUE]
    assert (stats.sent_total, stats.duplicates_total, stats.completed_total) == (2, 1, 1)


def test_duplicate_detection_is_per_queue_and_can_be_turned_off(broker: Broker) -> None:
    broker.ensure_queue("response", duplicate_window_s=0)
    assert broker.send(QUEUE, b"a", message_id="same")
    assert broker.send("response", b"a", message_id="same")
    assert broker.send("response", b"b", message_id="same")
    assert len(broker.receive("response", max_messages=5)) == 2


def test_send_batch_is_one_transaction_and_drops_duplicates_inside_it(broker: Broker) -> None:
    flags = broker.send_batch(
        QUEUE,
        [SendSpec(b"a", "m-1"), SendSpec(b"b", "m-2"), SendSpec(b"c", "m-1")],
    )
    assert flags == [True, True, False]
    with pytest.raises(MessageTooLarge):
        broker.send_batch(QUEUE, [SendSpec(b"d", "m-3"), SendSpec(b"x" * 300_000, "m-4")])
    # The failed batch stored nothing and remembered no id.
    assert broker.send(QUEUE, b"d", message_id="m-3") is True
    assert [m.message_id for m in broker.receive(QUEUE, max_messages=10)] == ["m-1", "m-2", "m-3"]


def test_complete_with_an_expired_lock_raises_lock_lost(broker: Broker, clock: FakeClock) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [message] = broker.receive(QUEUE)
    clock.advance(30)
    with pytest.raises(LockLost) as raised:
        broker.complete(QUEUE, message.lock_token)
    assert isinstance(raised.value, TransientError)
    assert broker.queue_stats()[QUEUE].active == 1  # still there, nothing lost


def test_complete_with_a_lock_taken_over_by_another_receiver_raises_lock_lost(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [stale] = broker.receive(QUEUE, owner="slow-worker")
    clock.advance(31)
    [fresh] = broker.receive(QUEUE, owner="fast-worker")
    with pytest.raises(LockLost):
        broker.complete(QUEUE, stale.lock_token)
    with pytest.raises(LockLost):
        broker.renew_lock(QUEUE, stale.lock_token)
    broker.complete(QUEUE, fresh.lock_token)
    with pytest.raises(LockLost):
        broker.complete(QUEUE, fresh.lock_token)  # settled already
    assert broker.queue_stats()[QUEUE].completed_total == 1


def test_renewing_a_lock_keeps_the_message_invisible_past_the_first_lock(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [message] = broker.receive(QUEUE)
    clock.advance(25)
    locked_until = broker.renew_lock(QUEUE, message.lock_token)
    assert locked_until == clock.now + 30
    clock.advance(25)
    assert broker.receive(QUEUE) == []
    broker.complete(QUEUE, message.lock_token)
    assert broker.queue_stats()[QUEUE].locked == 0


def test_complete_batch_reports_each_lost_lock(broker: Broker, clock: FakeClock) -> None:
    for n in range(3):
        broker.send(QUEUE, b"x", message_id=f"m-{n}")
    messages = broker.receive(QUEUE, max_messages=3)
    broker.abandon(QUEUE, messages[1].lock_token)
    done = broker.complete_batch(QUEUE, [m.lock_token for m in messages])
    assert done == [True, False, True]
    assert broker.queue_stats()[QUEUE].completed_total == 2


def test_replay_brings_dead_letters_back_with_a_fresh_delivery_count(
    broker: Broker, clock: FakeClock
) -> None:
    for n in range(3):
        broker.send(QUEUE, f"body-{n}".encode(), message_id=f"m-{n}", subject="s")
        [message] = broker.receive(QUEUE)
        broker.dead_letter(QUEUE, message.lock_token, reason="InvalidInput")
    assert broker.replay_deadletters(QUEUE, message_ids=["m-2", "nope"]) == 1
    assert [d.message_id for d in broker.deadletters(QUEUE)] == ["m-0", "m-1"]
    assert broker.replay_deadletters(QUEUE) == 2
    assert broker.deadletters(QUEUE) == []
    replayed = broker.receive(QUEUE, max_messages=10)
    assert [m.message_id.partition(":replay:")[0] for m in replayed] == ["m-2", "m-0", "m-1"]
    assert [m.application_properties["OriginalMessageId"] for m in replayed] == [
        "m-2",
        "m-0",
        "m-1",
    ]
    assert [m.body for m in replayed] == [b"body-2", b"body-0", b"body-1"]
    assert all(m.delivery_count == 1 and m.subject == "s" for m in replayed)


# Resubmitting from a Service Bus dead-letter queue is a new send of a copy; with duplicate
# detection on, a message sent with a MessageId already seen within the detection history
# window is accepted and discarded, so a copy must travel under a new id.
# https://learn.microsoft.com/azure/service-bus-messaging/duplicate-detection
# https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues


def _dead(broker: Broker, message_id: str, body: bytes = b"poison") -> None:
    assert broker.send(
        QUEUE, body, message_id=message_id, application_properties={"traceparent": "00-t-s-01"}
    )
    [message] = broker.receive(QUEUE)
    assert message.message_id == message_id
    broker.dead_letter(QUEUE, message.lock_token, reason="Poison")


def test_a_replay_gets_a_new_id_recorded_against_the_original_and_is_not_a_duplicate(
    broker: Broker, clock: FakeClock
) -> None:
    _dead(broker, "m-1")
    [dead] = broker.deadletters(QUEUE)
    clock.advance(5)  # well inside the 600 s window: the original id is still remembered
    assert not broker.send(QUEUE, b"poison", message_id="m-1")  # a plain re-send is dropped
    assert broker.replay_deadletters(QUEUE) == 1
    [replayed] = broker.receive(QUEUE)
    assert replayed.message_id == replay_id("m-1", dead.sequence_number)
    assert replayed.message_id != "m-1"
    assert replayed.application_properties == {
        "traceparent": "00-t-s-01",
        "OriginalMessageId": "m-1",
    }
    # The replay's own id is remembered: the same copy sent again is a duplicate.
    assert not broker.send(QUEUE, b"poison", message_id=replayed.message_id)
    assert broker.queue_stats()[QUEUE].duplicates_total == 2


def test_replaying_twice_sends_once(broker: Broker) -> None:
    _dead(broker, "m-1")
    assert broker.replay_deadletters(QUEUE) == 1
    assert broker.replay_deadletters(QUEUE) == 0  # nothing left to replay
    assert broker.replay_deadletters(QUEUE, message_ids=["m-1"]) == 0
    assert [m.message_id.startswith("m-1:replay:") for m in broker.peek(QUEUE)] == [True]


def test_a_dead_letter_whose_replay_was_already_sent_is_not_sent_again(
    broker: Broker,
) -> None:
    """A replay tool that sent the copy but did not remove the dead letter (as a resubmit in
    Azure can fail between the send and the settle) replays it once, not twice."""
    _dead(broker, "m-1")
    [dead] = broker.deadletters(QUEUE)
    assert broker.send(QUEUE, b"poison", message_id=replay_id("m-1", dead.sequence_number))
    assert broker.replay_deadletters(QUEUE) == 0
    assert broker.deadletters(QUEUE) == []
    assert len(broker.peek(QUEUE)) == 1


def test_a_replay_that_dies_again_replays_under_a_new_id_against_the_same_original(
    broker: Broker,
) -> None:
    _dead(broker, "m-1")
    broker.replay_deadletters(QUEUE)
    [first] = broker.receive(QUEUE)
    broker.dead_letter(QUEUE, first.lock_token, reason="Poison")  # still poison
    assert broker.replay_deadletters(QUEUE, message_ids=[first.message_id]) == 1
    [second] = broker.receive(QUEUE)
    assert second.message_id != first.message_id
    assert second.message_id.count(":replay:") == 1
    assert second.application_properties["OriginalMessageId"] == "m-1"


def test_a_parked_message_replayed_twice_is_sent_once(parking: Broker) -> None:
    _park(parking, "m-1")
    [parked] = parking.peek(PARKING)
    # Its replay was already sent (say, by a replay that did not finish removing it).
    assert parking.send(QUEUE, b"poison", message_id=replay_id("m-1", parked.sequence_number))
    assert parking.replay_parked(PARKING) == 0
    assert parking.peek(PARKING) == []
    [only] = parking.peek(QUEUE)
    assert only.message_id == replay_id("m-1", parked.sequence_number)


def test_a_parked_replay_is_not_a_duplicate_of_its_original(parking: Broker) -> None:
    assert parking.send(QUEUE, b"poison", message_id="m-1")
    [message] = parking.receive(QUEUE)
    parking.complete(QUEUE, message.lock_token)  # the pipeline parked it and completed it
    _park(parking, "m-1")
    assert parking.replay_parked(PARKING) == 1
    [replayed] = parking.receive(QUEUE)
    assert replayed.application_properties == {"OriginalMessageId": "m-1"}


PARKING = "deadletter"


def _park(broker: Broker, original_id: str, *, queue: str = QUEUE, body: bytes = b"poison") -> None:
    """Park a message the way the pipeline does: a send to the parking queue."""
    broker.send(
        PARKING,
        body,
        message_id=f"dl-{original_id}",
        correlation_id=f"conv-{original_id}",
        subject="deadletter",
        content_type="application/json",
        application_properties={
            "DeadLetterReason": "InvalidInput",
            "OriginalQueue": queue,
            "OriginalMessageId": original_id,
        },
    )


@pytest.fixture
def parking(broker: Broker) -> Broker:
    broker.ensure_queue(PARKING, max_delivery_count=10)
    return broker


def test_replaying_other_parked_messages_never_touches_one_that_does_not_match(
    parking: Broker,
) -> None:
    _park(parking, "m-1")
    for _ in range(12):  # more than the parking queue's MaxDeliveryCount of 10
        assert parking.replay_parked(PARKING, original_ids=["m-other"]) == 0
    [parked] = parking.peek(PARKING)
    assert parked.application_properties["OriginalMessageId"] == "m-1"
    assert parked.delivery_count == 0
    assert parking.deadletters(PARKING) == []

    assert parking.replay_parked(PARKING, original_ids=["m-1"]) == 1
    assert parking.peek(PARKING) == []
    [replayed] = parking.receive(QUEUE)
    assert replayed.message_id == f"m-1:replay:{parked.sequence_number}"
    assert replayed.body == b"poison"
    assert replayed.correlation_id == "conv-m-1"
    assert replayed.content_type == "application/json"
    assert replayed.delivery_count == 1


def test_replaying_every_parked_message_sends_each_to_its_own_queue_in_one_go(
    parking: Broker,
) -> None:
    parking.ensure_queue("response")
    _park(parking, "a", body=b"to-intent")
    _park(parking, "b", queue="response", body=b"to-response")
    _park(parking, "c", queue="no-such-queue")
    [locked] = parking.receive(PARKING)  # "a", under a live lock: left to its receiver

    assert parking.replay_parked(PARKING) == 1
    assert [m.body for m in parking.receive("response")] == [b"to-response"]
    assert parking.receive(QUEUE) == []
    left = {m.application_properties["OriginalMessageId"] for m in parking.peek(PARKING)}
    assert left == {"a", "c"}  # the unknown queue's message stays parked

    parking.abandon(PARKING, locked.lock_token)
    assert parking.replay_parked(PARKING) == 1
    [replayed] = parking.receive(QUEUE)
    assert replayed.body == b"to-intent"
    [stays] = parking.peek(PARKING)
    assert stays.application_properties["OriginalQueue"] == "no-such-queue"


def test_a_replayed_message_parked_again_replays_under_one_replay_suffix(
    parking: Broker,
) -> None:
    _park(parking, "m-1")
    parking.replay_parked(PARKING)
    [first] = parking.receive(QUEUE)
    _park(parking, first.message_id)  # still poison: parked again under its replay id
    assert parking.replay_parked(PARKING, original_ids=[first.message_id]) == 1
    [second] = parking.receive(QUEUE)
    assert second.message_id.startswith("m-1:replay:")
    assert second.message_id.count(":replay:") == 1
    assert second.message_id != first.message_id


def test_parked_messages_dead_lettered_on_the_parking_queue_are_replayed_too(
    parking: Broker,
) -> None:
    _park(parking, "m-1")
    [message] = parking.receive(PARKING)
    parking.dead_letter(PARKING, message.lock_token, reason=MAX_DELIVERY_COUNT_EXCEEDED)
    assert parking.replay_parked(PARKING, original_ids=["m-1"]) == 1
    assert parking.deadletters(PARKING) == []
    [replayed] = parking.receive(QUEUE)
    assert replayed.message_id.startswith("m-1:replay:")


def test_purge_removes_dead_letters_for_good(broker: Broker) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [message] = broker.receive(QUEUE)
    broker.dead_letter(QUEUE, message.lock_token, reason="Poison")
    assert broker.purge_deadletters(QUEUE) == 1
    assert broker.deadletters(QUEUE) == []
    assert broker.replay_deadletters(QUEUE) == 0


def test_queue_stats_count_each_state_as_time_passes(broker: Broker, clock: FakeClock) -> None:
    for message_id in ("locked-1", "locked-2", "dead"):
        broker.send(QUEUE, b"x", message_id=message_id)
    broker.send(QUEUE, b"x", message_id="later", scheduled_enqueue_time=clock.now + 10)
    broker.send(QUEUE, b"x", message_id="waiting")
    *_, dead = broker.receive(QUEUE, max_messages=3)
    broker.dead_letter(QUEUE, dead.lock_token, reason="r")
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled, stats.locked, stats.deadlettered) == (1, 1, 2, 1)
    assert stats.sent_total == 5
    clock.advance(31)  # both locks expire and the scheduled message falls due
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled, stats.locked, stats.deadlettered) == (4, 0, 0, 1)


def test_unknown_queues_and_bad_input_get_clear_errors(broker: Broker) -> None:
    with pytest.raises(UnknownQueue, match="ensure_queue"):
        broker.send("nope", b"x", message_id="m-1")
    with pytest.raises(UnknownQueue):
        broker.receive("nope")
    with pytest.raises(ValueError, match="message_id"):
        broker.send(QUEUE, b"x", message_id="")
    with pytest.raises(ValueError, match="bytes"):
        broker.send(QUEUE, "text", message_id="m-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="property"):
        broker.send(QUEUE, b"x", message_id="m-1", application_properties={"k": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="max_messages"):
        broker.receive(QUEUE, max_messages=0)
    with pytest.raises(ValueError, match="max_delivery_count"):
        broker.ensure_queue(QUEUE, max_delivery_count=0)
    # None of the rejected calls stored anything or burnt the message id.
    assert broker.send(QUEUE, b"x", message_id="m-1") is True
    assert broker.queue_stats()[QUEUE].sent_total == 1


def test_ensure_queue_is_idempotent_and_updates_settings(broker: Broker, clock: FakeClock) -> None:
    broker.ensure_queue(QUEUE, lock_duration_s=5.0, max_delivery_count=3)
    broker.ensure_queue(QUEUE, lock_duration_s=5.0, max_delivery_count=3)
    broker.send(QUEUE, b"x", message_id="m-1")
    [message] = broker.receive(QUEUE)
    assert message.locked_until == clock.now + 5.0
    assert broker.queues() == [QUEUE]


def test_a_closed_broker_refuses_work(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "b.db")
    broker.ensure_queue(QUEUE)
    broker.close()
    with pytest.raises(BrokerError, match="closed"):
        broker.send(QUEUE, b"x", message_id="m-1")


def test_the_database_runs_in_wal_mode_with_full_sync(broker: Broker) -> None:
    conn = broker._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_the_hot_path_uses_indexes_rather_than_scanning_the_table(broker: Broker) -> None:
    """The statements the broker really runs on send, receive, settle and wait, explained."""
    conn = broker._conn()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        broker.send(QUEUE, b"x", message_id="m-1")
        broker.send(QUEUE, b"y", message_id="m-2", scheduled_enqueue_time=time.time() + 60)
        first, *_ = broker.receive(QUEUE, max_messages=5)
        broker.renew_lock(QUEUE, first.lock_token)
        broker.complete(QUEUE, first.lock_token)
        await broker.wait_for_messages(QUEUE, timeout_s=0.01)
    finally:
        conn.set_trace_callback(None)
    hot = {
        sql
        for sql in statements
        if "sb_messages" in sql and sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE"))
    }
    assert len(hot) >= 4, statements
    for sql in hot:
        plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not [step for step in plan if step == "SCAN sb_messages"], (sql, plan)
        assert not [step for step in plan if "TEMP B-TREE" in step], (sql, plan)


async def test_a_waiting_receiver_wakes_when_a_message_is_sent(tmp_path: Path) -> None:
    with Broker(tmp_path / "b.db") as broker:
        broker.ensure_queue(QUEUE)

        async def send_soon() -> None:
            await asyncio.sleep(0.05)
            broker.send(QUEUE, b"x", message_id="m-1")

        started = time.monotonic()
        sender = asyncio.create_task(send_soon())
        woke = await broker.wait_for_messages(QUEUE, timeout_s=5.0)
        waited = time.monotonic() - started
        await sender
        assert woke is True
        assert waited < 2.0
        assert len(broker.receive(QUEUE)) == 1


async def test_waiting_returns_at_once_when_a_message_is_visible(broker: Broker) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    started = time.monotonic()
    assert await broker.wait_for_messages(QUEUE, timeout_s=5.0) is True
    assert time.monotonic() - started < 4.0  # not the 5 s timeout


async def test_waiting_on_an_empty_queue_times_out(broker: Broker) -> None:
    started = time.monotonic()
    assert await broker.wait_for_messages(QUEUE, timeout_s=0.1) is False
    assert time.monotonic() - started >= 0.09


async def test_waiting_ends_when_a_scheduled_message_falls_due(tmp_path: Path) -> None:
    with Broker(tmp_path / "b.db") as broker:
        broker.ensure_queue(QUEUE)
        # Sent before anyone listens, so no ring reaches the waiter: only the due time can.
        due = time.time() + 0.2
        broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=due)
        woke = await broker.wait_for_messages(QUEUE, timeout_s=10.0)
        assert woke is True
        assert due <= time.time() < due + 5.0
        assert len(broker.receive(QUEUE)) == 1
