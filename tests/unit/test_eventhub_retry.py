"""The event pump's retries: the function's retry policy, per partition, then past the batch."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import azure.functions as func
import pytest

from devhost import eventhub_pump
from devhost.appmodel import (
    EVENT_HUB,
    EXPONENTIAL_BACKOFF,
    FIXED_DELAY,
    AppModel,
    FunctionSpec,
    HostOptions,
    RetryPolicy,
)
from devhost.broker import Broker, EventSpec, partition_for_key
from devhost.broker.publisher import BrokerWriter
from devhost.worker import RETRY_WITHOUT_POLICY, EventHubPump
from tests.support.clock import FakeClock

HUB = "requests"
GROUP = "$Default"
PARTITIONS = 2
POISON = b"poison: card 4111 and a name nobody should log"

Handler = Callable[[list[func.EventHubEvent]], Awaitable[None]]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.sqlite3") as b:
        b.ensure_hub(HUB, partitions=PARTITIONS)
        yield b


def key_for(partition: int) -> str:
    """A partition key that lands on ``partition``."""
    return next(
        key
        for key in (f"key-{n}" for n in range(1000))
        if partition_for_key(key, PARTITIONS) == partition
    )


def publish(broker: Broker, partition: int, *bodies: bytes) -> None:
    key = key_for(partition)
    broker.publish_batch(HUB, [EventSpec(body=b, partition_key=key) for b in bodies])


def pump_for(
    broker: Broker, writer: BrokerWriter, handler: Handler, retry: RetryPolicy | None, batch: int
) -> EventHubPump:
    trigger = {"type": EVENT_HUB, "eventHubName": HUB}
    spec = FunctionSpec("ingest", EVENT_HUB, trigger, handler, retry=retry)
    model = AppModel((spec,), HostOptions(max_event_batch_size=batch), Path("."))
    return EventHubPump(spec, model, broker, owner="t", writer=writer)


@asynccontextmanager
async def running(pump: EventHubPump) -> AsyncIterator[None]:
    """Run ``pump`` for the body of the block, then stop it the way SIGTERM does."""
    stop = asyncio.Event()
    task = asyncio.create_task(pump.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def eventually(done: Callable[[], bool], *, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


class Recorder:
    """A function that fails on any batch holding the poison event and records the others."""

    def __init__(self) -> None:
        self.poison_attempts: list[float] = []  # time.monotonic() of each attempt
        self.processed: list[bytes] = []

    async def __call__(self, events: list[func.EventHubEvent]) -> None:
        bodies = [e.get_body() for e in events]
        if POISON in bodies:
            self.poison_attempts.append(time.monotonic())
            raise ValueError(f"cannot parse {POISON!r}")
        self.processed.extend(bodies)


async def test_a_failing_batch_is_retried_as_the_policy_says_then_checkpointed_past(
    broker: Broker, writer: BrokerWriter, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(EXPONENTIAL_BACKOFF, 3, minimum_interval_s=0.05, maximum_interval_s=0.12)
    function = Recorder()
    # Batches of two: [poison, a] fails every time; [b, c] and [d] come after it.
    publish(broker, 0, POISON, b"a", b"b", b"c", b"d")
    pump = pump_for(broker, writer, function, policy, batch=2)

    with caplog.at_level(logging.WARNING, logger="devhost.worker"):
        async with running(pump):
            await eventually(lambda: broker.hub_stats(HUB, GROUP)[0].backlog == 0, timeout=5)

    assert len(function.poison_attempts) == 1 + 3  # the first attempt and three retries
    gaps = [b - a for a, b in itertools.pairwise(function.poison_attempts)]
    assert [gap >= wait for gap, wait in zip(gaps, [0.05, 0.1, 0.12], strict=True)] == [True] * 3
    assert function.processed == [b"b", b"c", b"d"]
    assert broker.hub_stats(HUB, GROUP)[0].checkpoint == 4
    spent = [r.getMessage() for r in caplog.records if "retries spent" in r.getMessage()]
    assert len(spent) == 1
    assert "events 0-1" in spent[0]
    assert "4 attempts" in spent[0]
    assert "ValueError" in spent[0]
    assert "poison" not in caplog.text
    assert "4111" not in caplog.text


async def test_while_one_partition_backs_off_the_others_run_and_its_lease_is_kept(
    broker: Broker, writer: BrokerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease_s = 0.9
    monkeypatch.setattr(eventhub_pump, "LEASE_S", lease_s)
    policy = RetryPolicy(FIXED_DELAY, 1, delay_interval_s=2.0)
    function = Recorder()
    publish(broker, 0, POISON)
    pump = pump_for(broker, writer, function, policy, batch=10)

    async with running(pump):
        await eventually(lambda: len(function.poison_attempts) == 1, timeout=3)
        failed_at = function.poison_attempts[0]
        publish(broker, 1, b"x", b"y", b"z")
        await eventually(lambda: len(function.processed) == 3, timeout=1)
        assert len(function.poison_attempts) == 1  # partition 0 is still waiting

        # Past the lease's length the backing-off partition is still this instance's.
        await asyncio.sleep(max(0.0, failed_at + lease_s * 1.3 - time.monotonic()))
        waiting = broker.hub_stats(HUB, GROUP)[0]
        assert (waiting.owner, waiting.checkpoint) == ("t", -1)

        await eventually(lambda: broker.hub_stats(HUB, GROUP)[0].checkpoint == 0, timeout=3)

    assert len(function.poison_attempts) == 2
    assert function.poison_attempts[1] - failed_at >= 2.0
    assert sorted(function.processed) == [b"x", b"y", b"z"]


async def test_a_batch_that_succeeds_on_retry_is_checkpointed_once_and_not_skipped(
    broker: Broker, writer: BrokerWriter
) -> None:
    calls: list[list[bytes]] = []

    async def flaky(events: list[func.EventHubEvent]) -> None:
        calls.append([e.get_body() for e in events])
        if len(calls) < 3:
            raise ConnectionError("store unavailable")

    publish(broker, 0, b"one", b"two")
    policy = RetryPolicy(FIXED_DELAY, 5, delay_interval_s=0.02)
    pump = pump_for(broker, writer, flaky, policy, batch=10)
    async with running(pump):
        await eventually(lambda: broker.hub_stats(HUB, GROUP)[0].backlog == 0, timeout=5)
    assert calls == [[b"one", b"two"]] * 3
    assert pump.invocations == 1


async def test_a_retry_reads_exactly_the_failed_batch_even_when_more_events_arrive(
    broker: Broker, writer: BrokerWriter
) -> None:
    calls: list[list[bytes]] = []

    async def fails_once(events: list[func.EventHubEvent]) -> None:
        calls.append([e.get_body() for e in events])
        if len(calls) == 1:
            raise ConnectionError("store unavailable")

    publish(broker, 0, b"one")
    policy = RetryPolicy(FIXED_DELAY, 2, delay_interval_s=0.3)
    pump = pump_for(broker, writer, fails_once, policy, batch=10)
    async with running(pump):
        await eventually(lambda: len(calls) == 1, timeout=3)
        publish(broker, 0, b"two")
        await eventually(lambda: broker.hub_stats(HUB, GROUP)[0].backlog == 0, timeout=3)
    # The event published while the batch waited is not folded into the retried batch.
    assert calls == [[b"one"], [b"one"], [b"two"]]


async def test_without_a_policy_the_pump_retries_without_bound_on_the_old_schedule(
    broker: Broker, writer: BrokerWriter
) -> None:
    async def handler(events: list[func.EventHubEvent]) -> None:
        return None

    pump = pump_for(broker, writer, handler, None, batch=10)
    assert pump.retry == RETRY_WITHOUT_POLICY
    assert not pump.retry.exhausted(10_000)
    assert [pump.retry.delay_s(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


async def test_leases_are_renewed_on_the_monotonic_clock_when_the_wall_clock_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump renews its leases every third of a lease by the monotonic clock: a wall clock
    set back an hour (an NTP step) must not hold renewals off until the leases expire and
    another instance takes the partitions."""
    broker_clock = FakeClock()
    wall, mono = FakeClock(), FakeClock(1_000.0)
    monkeypatch.setattr(eventhub_pump, "time", SimpleNamespace(time=wall, monotonic=mono))
    with Broker(tmp_path / "broker.sqlite3", clock=broker_clock) as clocked:
        clocked.ensure_hub(HUB, partitions=PARTITIONS)
        writer = BrokerWriter(clocked)
        pump = pump_for(clocked, writer, Recorder(), None, batch=10)
        try:
            async with running(pump):
                await eventually(lambda: clocked.hub_stats(HUB, GROUP)[0].owner == "t", timeout=30)
                first_lease = clocked.hub_stats(HUB, GROUP)[0].lease_until
                wall.advance(-3600.0)
                broker_clock.advance(1.0)  # the lease has most of its length left
                mono.advance(eventhub_pump.LEASE_S / 3 + 0.1)
                await eventually(
                    lambda: clocked.hub_stats(HUB, GROUP)[0].lease_until > first_lease,
                    timeout=30,
                )
        finally:
            await writer.close()
