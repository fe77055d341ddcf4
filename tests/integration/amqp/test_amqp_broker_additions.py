"""The broker operations the AMQP endpoint needs: deferral, time-to-live, scheduled messages by
sequence number, peek from a sequence number, and the schema 3 migration that carries them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devhost.broker import Broker, EventSpec, LockLost, SendSpec
from devhost.broker.schema import SCHEMA_VERSION
from tests.integration.amqp.conftest import ManualClock

QUEUE = "q"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def broker(tmp_path: Path, clock: ManualClock) -> Broker:
    broker = Broker(tmp_path / "b.sqlite3", clock=clock)
    broker.ensure_queue(QUEUE, lock_duration_s=30.0, max_delivery_count=5)
    return broker


def test_a_deferred_message_comes_back_only_by_sequence_number(
    broker: Broker, clock: ManualClock
) -> None:
    broker.send(QUEUE, b"d", message_id="d")
    (message,) = broker.receive(QUEUE)
    broker.defer(QUEUE, message.lock_token)
    assert broker.receive(QUEUE) == []
    assert broker.next_visible_time(QUEUE) is None
    assert broker.queue_stats()[QUEUE].scheduled == 1
    clock.advance(10**6)  # however long: deferred is not scheduled for a time
    assert broker.receive(QUEUE) == []
    (again,) = broker.receive_deferred(QUEUE, [message.sequence_number])
    assert (again.body, again.delivery_count) == (b"d", 2)
    broker.abandon(QUEUE, again.lock_token)  # back to deferred, not to the queue
    assert broker.receive(QUEUE) == []
    (third,) = broker.receive_deferred(QUEUE, [message.sequence_number])
    clock.advance(31)  # the lock expires: deferred again
    assert broker.receive(QUEUE) == []
    with pytest.raises(LockLost):
        broker.complete(QUEUE, third.lock_token)
    (fourth,) = broker.receive_deferred(QUEUE, [message.sequence_number])
    broker.complete(QUEUE, fourth.lock_token)
    assert broker.receive_deferred(QUEUE, [message.sequence_number]) == []


def test_time_to_live_removes_undelivered_messages(broker: Broker, clock: ManualClock) -> None:
    broker.send_batch(
        QUEUE,
        [
            SendSpec(b"short", "short", time_to_live_s=10.0),
            SendSpec(b"long", "long", time_to_live_s=100.0),
            SendSpec(b"late", "late", scheduled_enqueue_time=clock() + 50, time_to_live_s=10.0),
        ],
    )
    clock.advance(20)
    (long,) = broker.receive(QUEUE, max_messages=5)
    assert long.message_id == "long"
    broker.complete(QUEUE, long.lock_token)
    clock.advance(35)  # "late" is due at 50 and lives until 60
    (late,) = broker.receive(QUEUE, max_messages=5)
    assert late.message_id == "late"
    assert late.expires_at == pytest.approx(late.scheduled_enqueue_time + 10.0)
    with pytest.raises(ValueError, match="time_to_live_s"):
        broker.send_batch(QUEUE, [SendSpec(b"x", "x", time_to_live_s=0)])


def test_scheduled_sends_report_sequence_numbers_and_can_be_cancelled(
    broker: Broker, clock: ManualClock
) -> None:
    due = clock() + 60
    numbers = broker.send_batch_sequenced(
        QUEUE,
        [
            SendSpec(b"a", "a", scheduled_enqueue_time=due),
            SendSpec(b"b", "b", scheduled_enqueue_time=due),
            SendSpec(b"a", "a"),  # a duplicate id: dropped
        ],
    )
    assert numbers == [1, 2, None]
    assert broker.cancel_scheduled(QUEUE, [2, 99]) == 1
    assert [m.sequence_number for m in broker.peek(QUEUE, from_sequence=1)] == [1]
    assert broker.peek(QUEUE, from_sequence=2) == []
    clock.advance(61)
    assert broker.cancel_scheduled(QUEUE, [1]) == 0  # due already: no longer cancellable
    (message,) = broker.receive(QUEUE)
    assert message.sequence_number == 1


def test_a_schema_2_file_gains_expiry_and_deferral_and_keeps_its_messages(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "old.sqlite3"
    with Broker(path, clock=clock) as broker:
        broker.ensure_queue(QUEUE)
        broker.send(QUEUE, b"x", message_id="m-1")
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX sb_messages_expiry")
    conn.execute("ALTER TABLE sb_messages DROP COLUMN expires_at")
    conn.execute("ALTER TABLE sb_messages DROP COLUMN deferred")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Broker(path, clock=clock) as broker:
        (message,) = broker.receive(QUEUE)
        assert (message.message_id, message.expires_at) == ("m-1", None)
        broker.defer(QUEUE, message.lock_token)
        assert [m.message_id for m in broker.receive_deferred(QUEUE, [1])] == ["m-1"]
        assert broker._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_schema_3_file_gains_event_system_properties_and_keeps_its_events(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "old.sqlite3"
    with Broker(path, clock=clock) as broker:
        broker.ensure_hub("h", partitions=1)
        broker.publish("h", b"old", properties={"k": "v"})
    conn = sqlite3.connect(path)
    for column in ("message_id", "correlation_id", "content_type"):
        conn.execute(f"ALTER TABLE eh_events DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with Broker(path, clock=clock) as broker:
        broker.publish_batch("h", [EventSpec(b"new", message_id="m", content_type="text/plain")])
        old, new = broker.read_partition("h", 0, after_sequence=-1, max_events=9)
        assert (old.body, old.properties, old.message_id, old.content_type) == (
            b"old",
            {"k": "v"},
            None,
            None,
        )
        assert (new.body, new.message_id, new.content_type) == (b"new", "m", "text/plain")
        assert broker._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_event_hub_reads_by_position_without_a_lease(tmp_path: Path, clock: ManualClock) -> None:
    with Broker(tmp_path / "eh.sqlite3", clock=clock) as broker:
        broker.ensure_hub("h", partitions=2)
        assert broker.hubs() == {"h": 2}
        empty = broker.partition_info("h", 1)
        assert (empty.begin_sequence, empty.last_sequence, empty.last_offset) == (0, -1, "-1")
        positions = broker.publish_batch(
            "h", [EventSpec(b"a", partition_id=1), EventSpec(b"b", partition_id=1)]
        )
        clock.advance(10)
        (later,) = broker.publish_batch("h", [EventSpec(b"c", partition_id=1)])
        info = broker.partition_info("h", 1)
        assert (info.begin_sequence, info.last_sequence, info.last_offset) == (0, 2, later.offset)
        assert info.last_enqueued_time == pytest.approx(clock())
        read = broker.read_partition("h", 1, after_sequence=-1, max_events=10)
        assert [e.body for e in read] == [b"a", b"b", b"c"]
        first_offset = int(positions[0].offset)
        assert broker.sequence_after("h", 1, offset=first_offset) == 0
        assert broker.sequence_after("h", 1, offset=first_offset, inclusive=True) == -1
        assert broker.sequence_after("h", 1, enqueued_time=clock() - 5) == 1
        assert broker.sequence_after("h", 1, offset=int(later.offset)) == 2  # nothing after
        with pytest.raises(ValueError, match="not both"):
            broker.publish_batch("h", [EventSpec(b"x", partition_key="k", partition_id=0)])


def test_one_dead_letter_is_removed_by_sequence_number(broker: Broker) -> None:
    broker.send_batch(QUEUE, [SendSpec(b"p", "p-0"), SendSpec(b"p", "p-1")])
    for message in broker.receive(QUEUE, max_messages=2):
        broker.dead_letter(QUEUE, message.lock_token, reason="Bad")
    first, second = broker.deadletters(QUEUE)
    assert [d.sequence_number for d in broker.deadletters(QUEUE, from_sequence=2)] == [2]
    assert broker.remove_deadletter(QUEUE, first.sequence_number) is True
    assert broker.remove_deadletter(QUEUE, first.sequence_number) is False
    assert [d.sequence_number for d in broker.deadletters(QUEUE)] == [second.sequence_number]
