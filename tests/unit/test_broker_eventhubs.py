"""The devhost broker's Event Hubs semantics: partitions, leases, checkpoints, stateless reads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.broker import (
    Broker,
    BrokerError,
    EventSpec,
    LeaseLost,
    MessageTooLarge,
    UnknownHub,
    partition_for_key,
)
from tests.support.clock import FakeClock

ROOT = Path(__file__).resolve().parents[2]
HUB = "requests"
GROUP = "$Default"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.db", clock=clock) as opened:
        opened.ensure_hub(HUB, partitions=4)
        yield opened


def test_partition_key_hashing_is_stable_across_processes_and_spreads_keys() -> None:
    keys = [f"customer-{n}" for n in range(400)]
    here = [partition_for_key(key, 4) for key in keys]
    # Another interpreter with a different string-hash seed must place every key the same way.
    script = (
        "import json, sys; from devhost.broker import partition_for_key;"
        " print(json.dumps([partition_for_key(k, 4) for k in json.loads(sys.argv[1])]))"
    )
    elsewhere = subprocess.run(
        [sys.executable, "-c", script, json.dumps(keys)],
        capture_output=True,
        check=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert json.loads(elsewhere.stdout) == here
    counts = [here.count(p) for p in range(4)]
    assert all(60 <= count <= 140 for count in counts), counts


def test_events_with_one_key_land_in_one_partition_in_order(broker: Broker) -> None:
    positions = [broker.publish(HUB, f"e{n}".encode(), partition_key="cust-7") for n in range(5)]
    partitions = {p.partition_id for p in positions}
    assert partitions == {partition_for_key("cust-7", 4)}
    assert [p.sequence_number for p in positions] == [0, 1, 2, 3, 4]


def test_events_without_a_key_go_round_robin(broker: Broker) -> None:
    positions = broker.publish_batch(HUB, [EventSpec(b"x") for _ in range(8)])
    assert [p.partition_id for p in positions] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [p.sequence_number for p in positions] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert broker.publish(HUB, b"y")[:2] == (0, 2)  # the rotation continues across calls


def test_a_publisher_learns_the_position_a_reader_will_see(broker: Broker) -> None:
    positions = broker.publish_batch(HUB, [EventSpec(f"e{n}".encode()) for n in range(8)])
    broker.claim_partitions(HUB, GROUP, "owner-a")
    seen = {
        (e.partition_id, e.sequence_number, e.offset): e.body
        for partition in range(4)
        for e in broker.read(HUB, GROUP, partition, max_events=10, owner="owner-a")
    }
    assert [seen[p] for p in positions] == [f"e{n}".encode() for n in range(8)]
    assert len({p.offset for p in positions}) == 8


def test_read_returns_events_after_the_checkpoint_and_resumes_from_it(broker: Broker) -> None:
    for n in range(6):
        broker.publish(HUB, f"e{n}".encode(), partition_key="k", properties={"n": n})
    partition = partition_for_key("k", 4)
    assert broker.claim_partitions(HUB, GROUP, "owner-a") == [0, 1, 2, 3]
    batch = broker.read(HUB, GROUP, partition, max_events=4, owner="owner-a")
    assert [e.body for e in batch] == [b"e0", b"e1", b"e2", b"e3"]
    assert [e.properties["n"] for e in batch] == [0, 1, 2, 3]
    assert all(e.partition_key == "k" and e.partition_id == partition for e in batch)
    # Stateless: without a checkpoint the same events come back.
    again = broker.read(HUB, GROUP, partition, max_events=4, owner="owner-a")
    assert [e.sequence_number for e in again] == [0, 1, 2, 3]
    broker.checkpoint(HUB, GROUP, partition, batch[-1].sequence_number, owner="owner-a")
    rest = broker.read(HUB, GROUP, partition, max_events=10, owner="owner-a")
    assert [e.body for e in rest] == [b"e4", b"e5"]
    ahead = broker.read(HUB, GROUP, partition, max_events=10, owner="owner-a", after_sequence=4)
    assert [e.sequence_number for e in ahead] == [5]
    # Another consumer group keeps its own position.
    broker.claim_partitions(HUB, "audit", "owner-z")
    assert len(broker.read(HUB, "audit", partition, max_events=10, owner="owner-z")) == 6


def test_checkpoint_only_moves_forward(broker: Broker) -> None:
    broker.publish_batch(HUB, [EventSpec(b"x", partition_key="k") for _ in range(5)])
    partition = partition_for_key("k", 4)
    broker.claim_partitions(HUB, GROUP, "owner-a")
    broker.checkpoint(HUB, GROUP, partition, 3, owner="owner-a")
    broker.checkpoint(HUB, GROUP, partition, 1, owner="owner-a")
    assert broker.hub_stats(HUB, GROUP)[partition].checkpoint == 3
    with pytest.raises(ValueError, match="last event"):
        broker.checkpoint(HUB, GROUP, partition, 99, owner="owner-a")
    stats = broker.hub_stats(HUB, GROUP)[partition]
    assert (stats.last_sequence, stats.checkpoint, stats.backlog) == (4, 3, 1)


def test_only_the_lease_holder_may_checkpoint_or_read(broker: Broker, clock: FakeClock) -> None:
    broker.publish_batch(HUB, [EventSpec(b"x") for _ in range(8)])
    broker.claim_partitions(HUB, GROUP, "owner-a", lease_s=10)
    with pytest.raises(LeaseLost):
        broker.checkpoint(HUB, GROUP, 0, 0, owner="owner-b")
    with pytest.raises(LeaseLost):
        broker.read(HUB, GROUP, 0, max_events=1, owner="owner-b")
    clock.advance(11)  # owner-a stopped renewing
    with pytest.raises(LeaseLost):
        broker.checkpoint(HUB, GROUP, 0, 0, owner="owner-a")
    assert broker.claim_partitions(HUB, GROUP, "owner-b") == [0, 1, 2, 3]
    broker.checkpoint(HUB, GROUP, 0, 1, owner="owner-b")
    assert broker.hub_stats(HUB, GROUP)[0].checkpoint == 1


def test_claims_balance_among_two_then_three_owners(broker: Broker, clock: FakeClock) -> None:
    broker.ensure_hub(HUB, partitions=6)
    assert broker.claim_partitions(HUB, GROUP, "a") == [0, 1, 2, 3, 4, 5]
    b = broker.claim_partitions(HUB, GROUP, "b")
    a = broker.claim_partitions(HUB, GROUP, "a")
    assert (len(a), len(b)) == (3, 3)
    assert set(a).isdisjoint(b)
    c = broker.claim_partitions(HUB, GROUP, "c")
    a = broker.claim_partitions(HUB, GROUP, "a")
    b = broker.claim_partitions(HUB, GROUP, "b")
    c = broker.claim_partitions(HUB, GROUP, "c")
    assert sorted(map(len, (a, b, c))) == [2, 2, 2]
    assert sorted(a + b + c) == [0, 1, 2, 3, 4, 5]
    # Stable: claiming again changes nothing.
    assert broker.claim_partitions(HUB, GROUP, "a") == a
    owners = {p: s.owner for p, s in broker.hub_stats(HUB, GROUP).items()}
    assert sorted(owners.values()) == ["a", "a", "b", "b", "c", "c"]


def test_uneven_partitions_give_no_owner_more_than_one_extra(broker: Broker) -> None:
    claims: dict[str, list[int]] = {}
    for _ in range(3):  # a few rounds, as periodic renewals would
        for owner in ("a", "b", "c"):
            claims[owner] = broker.claim_partitions(HUB, GROUP, owner)
    assert sorted(len(held) for held in claims.values()) == [1, 1, 2]
    assert sorted(p for held in claims.values() for p in held) == [0, 1, 2, 3]


def test_expired_leases_are_taken_over_by_the_live_owners(broker: Broker, clock: FakeClock) -> None:
    broker.claim_partitions(HUB, GROUP, "a", lease_s=10)
    broker.claim_partitions(HUB, GROUP, "b", lease_s=10)
    broker.claim_partitions(HUB, GROUP, "a", lease_s=10)
    clock.advance(6)
    survivor = broker.claim_partitions(HUB, GROUP, "b", lease_s=10)  # b renews, a does not
    assert len(survivor) == 2
    clock.advance(6)
    assert broker.claim_partitions(HUB, GROUP, "b", lease_s=10) == [0, 1, 2, 3]
    assert {s.owner for s in broker.hub_stats(HUB, GROUP).values()} == {"b"}


def test_released_partitions_are_free_at_once(broker: Broker) -> None:
    broker.claim_partitions(HUB, GROUP, "a")
    broker.release_partitions(HUB, GROUP, "a")
    assert broker.claim_partitions(HUB, GROUP, "b") == [0, 1, 2, 3]


def test_hub_stats_report_backlog_per_partition(broker: Broker) -> None:
    broker.publish_batch(HUB, [EventSpec(b"x", partition_key="k") for _ in range(3)])
    partition = partition_for_key("k", 4)
    stats = broker.hub_stats(HUB, GROUP)
    assert set(stats) == {0, 1, 2, 3}
    assert stats[partition].backlog == 3
    assert sum(s.backlog for s in stats.values()) == 3
    assert stats[partition].owner is None


def test_partitions_can_grow_but_not_shrink(broker: Broker) -> None:
    broker.ensure_hub(HUB, partitions=8)
    assert broker.claim_partitions(HUB, GROUP, "a") == list(range(8))
    with pytest.raises(BrokerError, match="cannot be reduced"):
        broker.ensure_hub(HUB, partitions=2)


def test_bad_input_gets_clear_errors_and_stores_nothing(broker: Broker) -> None:
    with pytest.raises(UnknownHub):
        broker.publish("nope", b"x")
    with pytest.raises(MessageTooLarge):
        broker.publish(HUB, b"x" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="property"):
        broker.publish(HUB, b"x", properties={"n": float("nan")})
    broker.claim_partitions(HUB, GROUP, "a")
    with pytest.raises(ValueError, match="partitions"):
        broker.read(HUB, GROUP, 9, max_events=1, owner="a")
    with pytest.raises(ValueError, match="lease_s"):
        broker.claim_partitions(HUB, GROUP, "a", lease_s=0)
    assert all(s.last_sequence == -1 for s in broker.hub_stats(HUB, GROUP).values())


async def test_a_waiting_reader_wakes_when_an_event_is_published(tmp_path: Path) -> None:
    with Broker(tmp_path / "b.db") as broker:
        broker.ensure_hub(HUB)
        assert await broker.wait_for_events(HUB, timeout_s=0.01) is False  # starts listening

        async def publish_soon() -> None:
            await asyncio.sleep(0.05)
            broker.publish(HUB, b"x")

        started = time.monotonic()
        publisher = asyncio.create_task(publish_soon())
        woke = await broker.wait_for_events(HUB, timeout_s=5.0)
        await publisher
        assert woke is True
        assert time.monotonic() - started < 2.0
