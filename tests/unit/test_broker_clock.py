"""The broker under wall-clock jumps (issue 10, item 5): a hand-moved clock injected into
real brokers on one SQLite file.

Scheduled enqueue times, locks and leases are wall times (several processes share them); the
clock rule (see ``Broker``) bounds each by how far ahead it was set, so a backward jump never
holds work longer than the message's own delay, the lock duration or the lease duration.
Service Bus makes a scheduled message available at its ScheduledEnqueueTime and a message
whose lock expired available again:
https://learn.microsoft.com/azure/service-bus-messaging/message-sequencing#scheduled-messages
https://learn.microsoft.com/azure/service-bus-messaging/message-transfers-locks-settlement#peeklock
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.broker import Broker, LockLost
from devhost.broker.schema import SCHEMA_VERSION
from tests.support.clock import FakeClock

QUEUE = "intent"
HOUR = 3600.0
STEP = 0.125  # exact in binary: the sums of steps stay exact


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.db", clock=clock) as opened:
        opened.ensure_queue(QUEUE, lock_duration_s=30.0, max_delivery_count=5)
        yield opened


def seconds_until_received(broker: Broker, clock: FakeClock, *, limit_s: float) -> float:
    """Broker seconds from now until a receive returns a message, polled every STEP."""
    waited = 0.0
    while waited <= limit_s:
        if broker.receive(QUEUE):
            return waited
        clock.advance(STEP)
        waited += STEP
    raise AssertionError(f"nothing was received within {limit_s} s")


def test_a_scheduled_message_is_due_within_its_delay_after_the_clock_goes_back_an_hour(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 10.0)
    clock.advance(-HOUR)
    waited = seconds_until_received(broker, clock, limit_s=2 * HOUR)
    # Without the rule it would wait 3,610 s; with it, at most its own 10 s delay.
    assert 10.0 - STEP < waited <= 10.0


def test_a_small_step_back_keeps_the_original_due_time(broker: Broker, clock: FakeClock) -> None:
    """Sent with a 60 s delay; 50 s later the clock goes back 20 s. The message is still due
    at its scheduled wall time (30 s on), which is within its delay: nothing is released early."""
    broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 60.0)
    clock.advance(50.0)
    clock.advance(-20.0)
    waited = seconds_until_received(broker, clock, limit_s=HOUR)
    assert 30.0 - STEP < waited <= 30.0


def test_the_shortened_due_time_is_stored_for_every_other_process(
    tmp_path: Path, broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 10.0)
    clock.advance(-HOUR)
    assert broker.receive(QUEUE) == []  # this look stores due = now + 10 s
    due = broker.next_visible_time(QUEUE)
    assert due == pytest.approx(clock.now + 10.0)
    # Another process whose clock reads an hour earlier still (it never jumps) agrees.
    other_clock = FakeClock(clock.now)
    with Broker(broker.path, clock=other_clock) as other:
        assert other.next_visible_time(QUEUE) == pytest.approx(due)
        other_clock.advance(10.0)
        [message] = other.receive(QUEUE)
        assert message.message_id == "m-1"


def test_the_scaler_starts_a_receiver_for_a_queue_scaled_to_zero(
    broker: Broker, clock: FakeClock
) -> None:
    """With every worker scaled to zero nobody receives. After the jump queue_stats counts the
    message as active (a receiver must come and look); once one has, it is scheduled again,
    due its own delay after that look."""
    broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 10.0)
    assert broker.queue_stats()[QUEUE].scheduled == 1
    clock.advance(-HOUR)
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled) == (1, 0)
    assert broker.receive(QUEUE) == []  # the look that stores due = now + 10 s
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled) == (0, 1)
    clock.advance(10.0)
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.scheduled) == (1, 0)


def test_a_forward_jump_releases_scheduled_messages_early(broker: Broker, clock: FakeClock) -> None:
    """Accepted: a scheduled message is a retry or a delay, and coming early does no harm."""
    broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 600.0)
    clock.advance(2 * HOUR)
    [message] = broker.receive(QUEUE)
    assert message.message_id == "m-1"


def test_a_lock_outlives_a_backward_jump_by_at_most_one_lock_duration(
    broker: Broker, clock: FakeClock
) -> None:
    """A worker that dies holding a lock when the clock goes back an hour does not freeze its
    message for that hour: another receiver gets it one lock duration (30 s) on."""
    broker.send(QUEUE, b"x", message_id="m-1")
    [held] = broker.receive(QUEUE, owner="dead-worker")
    clock.advance(-HOUR)
    waited = seconds_until_received(broker, clock, limit_s=2 * HOUR)
    assert 30.0 - STEP < waited <= 30.0
    with pytest.raises(LockLost):
        broker.complete(QUEUE, held.lock_token)


def test_a_live_holder_keeps_its_lock_across_a_backward_jump(
    broker: Broker, clock: FakeClock
) -> None:
    broker.send(QUEUE, b"x", message_id="m-1")
    [held] = broker.receive(QUEUE)
    clock.advance(-HOUR)
    assert broker.receive(QUEUE) == []
    clock.advance(20.0)
    broker.renew_lock(QUEUE, held.lock_token)
    clock.advance(20.0)
    assert broker.receive(QUEUE) == []  # renewed: 30 s from the renewal
    broker.complete(QUEUE, held.lock_token)
    assert broker.queue_stats()[QUEUE].completed_total == 1


def test_a_forward_jump_expires_locks_and_redelivers(broker: Broker, clock: FakeClock) -> None:
    """Accepted: the message is delivered again, which at-least-once consumers handle."""
    broker.send(QUEUE, b"x", message_id="m-1")
    [held] = broker.receive(QUEUE)
    clock.advance(2 * HOUR)
    [again] = broker.receive(QUEUE)
    assert (again.message_id, again.delivery_count) == ("m-1", 2)
    with pytest.raises(LockLost):
        broker.complete(QUEUE, held.lock_token)


def test_a_dead_owners_lease_lasts_at_most_one_lease_after_a_backward_jump(
    broker: Broker, clock: FakeClock
) -> None:
    broker.ensure_hub("requests", partitions=1)  # one partition: no rebalancing, only expiry
    assert broker.claim_partitions("requests", "g", "dead-owner", lease_s=10.0) == [0]
    clock.advance(-HOUR)
    assert broker.claim_partitions("requests", "g", "live-owner", lease_s=10.0) == []
    clock.advance(9.875)
    assert broker.claim_partitions("requests", "g", "live-owner", lease_s=10.0) == []
    clock.advance(0.25)
    assert broker.claim_partitions("requests", "g", "live-owner", lease_s=10.0) == [0]
    assert {p.owner for p in broker.hub_stats("requests", "g").values()} == {"live-owner"}


def test_a_schema_1_broker_file_gains_the_clock_columns_and_keeps_its_messages(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "old.db"
    with Broker(path, clock=clock) as broker:
        broker.ensure_queue(QUEUE)
        broker.ensure_hub("requests", partitions=1)
        broker.send(QUEUE, b"x", message_id="m-1", scheduled_enqueue_time=clock.now + 10.0)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE sb_messages DROP COLUMN hold_s")
    conn.execute("ALTER TABLE eh_consumers DROP COLUMN lease_s")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Broker(path, clock=clock) as broker:
        assert broker.receive(QUEUE) == []
        clock.advance(10.0)
        [message] = broker.receive(QUEUE)  # due at its stored time, as before
        assert message.message_id == "m-1"
        version = broker._conn().execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION
        assert broker.claim_partitions("requests", "g", "o", lease_s=5.0) == [0]
