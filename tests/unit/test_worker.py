"""The devhost worker's pumps and the per-process broker writer they and the publisher share."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devhost.appmodel import EVENT_HUB, SERVICE_BUS, AppModel, FunctionSpec, HostOptions
from devhost.broker import Broker, EventSpec, LockLost, MessageTooLarge, SendSpec
from devhost.broker.publisher import BrokerWriter
from devhost.startup import DECIDED_AT_ENV, decided_at
from devhost.worker import EventHubPump, HopLog, ServiceBusPump
from shared.errors import TransientError

QUEUE = "work"
HUB = "requests"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.sqlite3") as b:
        b.ensure_queue(QUEUE, lock_duration_s=30, max_delivery_count=5, max_message_bytes=2048)
        b.ensure_hub(HUB, partitions=2)
        yield b


class Gate:
    """Holds the writer's thread inside a call until released, so jobs pile up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.release.wait(10)

    async def close_behind(self, writer: BrokerWriter) -> asyncio.Task[None]:
        task = asyncio.create_task(writer.call(self.hold))
        assert await asyncio.to_thread(self.entered.wait, 10)
        return task


def spec_of(n: int, *, size: int = 10) -> SendSpec:
    return SendSpec(body=b"x" * size, message_id=f"m-{n}")


# --------------------------------------------------------------------------- the writer


async def test_sends_that_arrive_together_are_committed_in_one_transaction(
    broker: Broker, writer: BrokerWriter
) -> None:
    gate = Gate()
    held = await gate.close_behind(writer)
    sends = [asyncio.create_task(writer.send(QUEUE, spec_of(n))) for n in range(40)]
    await asyncio.sleep(0.05)  # every send is queued behind the held call
    before = writer.stats.transactions
    gate.release.set()
    assert await asyncio.gather(*sends) == [True] * 40
    await held
    assert writer.stats.transactions - before == 1
    assert writer.stats.largest_batch == 40
    assert broker.queue_stats()[QUEUE].active == 40


async def test_a_lone_send_goes_out_at_once_and_is_durable_when_awaited(
    tmp_path: Path, broker: Broker, writer: BrokerWriter
) -> None:
    assert await writer.send(QUEUE, spec_of(1)) is True
    # Another connection (as another process would) sees it as soon as the await returns.
    with Broker(tmp_path / "broker.sqlite3") as other:
        assert [m.message_id for m in other.peek(QUEUE)] == ["m-1"]


async def test_a_bad_message_in_a_batch_fails_only_its_own_sender(
    broker: Broker, writer: BrokerWriter
) -> None:
    gate = Gate()
    held = await gate.close_behind(writer)
    good = [asyncio.create_task(writer.send(QUEUE, spec_of(n))) for n in (1, 2)]
    bad = asyncio.create_task(writer.send(QUEUE, spec_of(3, size=4096)))
    await asyncio.sleep(0.05)
    gate.release.set()
    await held
    assert await asyncio.gather(*good) == [True, True]
    with pytest.raises(MessageTooLarge):
        await bad
    assert sorted(m.message_id for m in broker.peek(QUEUE)) == ["m-1", "m-2"]


async def test_a_duplicate_message_id_is_reported_as_dropped(writer: BrokerWriter) -> None:
    assert await writer.send(QUEUE, spec_of(7)) is True
    assert await writer.send(QUEUE, spec_of(7)) is False


async def test_completions_are_batched_and_a_lost_lock_is_reported_per_message(
    broker: Broker, writer: BrokerWriter
) -> None:
    for n in range(3):
        await writer.send(QUEUE, spec_of(n))
    messages = await writer.call(broker.receive, QUEUE, max_messages=3, owner="t")
    gate = Gate()
    held = await gate.close_behind(writer)
    tokens = [m.lock_token for m in messages[:2]] + ["not-a-lock"]
    completions = [asyncio.create_task(writer.complete(QUEUE, t)) for t in tokens]
    await asyncio.sleep(0.05)
    gate.release.set()
    await held
    assert await asyncio.gather(*completions) == [True, True, False]
    stats = broker.queue_stats()[QUEUE]
    assert (stats.completed_total, stats.locked) == (2, 1)


async def test_a_caller_cancelled_before_its_turn_has_nothing_done(
    broker: Broker, writer: BrokerWriter
) -> None:
    gate = Gate()
    held = await gate.close_behind(writer)
    send = asyncio.create_task(writer.send(QUEUE, spec_of(1)))
    await asyncio.sleep(0.01)
    send.cancel()
    await asyncio.sleep(0.01)
    gate.release.set()
    await held
    await writer.send(QUEUE, spec_of(2))  # the thread has moved past the cancelled job
    assert [m.message_id for m in broker.peek(QUEUE)] == ["m-2"]


async def test_errors_of_other_calls_reach_their_caller(
    broker: Broker, writer: BrokerWriter
) -> None:
    with pytest.raises(LockLost):
        await writer.call(broker.renew_lock, QUEUE, "not-a-lock")


async def test_close_finishes_queued_work_and_later_use_starts_again(
    broker: Broker, writer: BrokerWriter
) -> None:
    sends = [asyncio.create_task(writer.send(QUEUE, spec_of(n))) for n in range(5)]
    await asyncio.sleep(0)
    await writer.close()
    assert all(t.done() for t in sends)
    assert await writer.send(QUEUE, spec_of(99)) is True
    assert broker.queue_stats()[QUEUE].active == 6


# --------------------------------------------------------------------------- the pumps


def model_with(spec: FunctionSpec, *, concurrency: int = 4, batch: int = 8) -> AppModel:
    host = HostOptions(max_concurrent_calls=concurrency, max_event_batch_size=batch)
    return AppModel((spec,), host, Path("."))


def queue_function(handler: Callable[[func.ServiceBusMessage], Awaitable[None]]) -> FunctionSpec:
    trigger = {"type": SERVICE_BUS, "queueName": QUEUE, "name": "msg"}
    return FunctionSpec("work_agent", SERVICE_BUS, trigger, handler)


async def run_until(pump: Any, done: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Run ``pump`` until ``done()`` holds, then stop it the way SIGTERM does."""
    stop = asyncio.Event()
    running = asyncio.create_task(pump.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running


async def test_the_pump_completes_every_message_whose_function_returns(
    broker: Broker, writer: BrokerWriter, tmp_path: Path
) -> None:
    seen: list[str] = []

    async def handler(msg: func.ServiceBusMessage) -> None:
        seen.append(msg.get_body().decode())

    for n in range(6):
        broker.send(QUEUE, f"body-{n}".encode(), message_id=f"m-{n}")
    hop_log = HopLog(tmp_path / "hops" / "work.jsonl")
    pump = ServiceBusPump(
        queue_function(handler),
        model_with(queue_function(handler)),
        broker,
        owner="test",
        writer=writer,
        hop_log=hop_log,
    )
    await run_until(pump, lambda: broker.queue_stats()[QUEUE].completed_total == 6)
    hop_log.close()
    assert sorted(seen) == [f"body-{n}" for n in range(6)]
    stats = broker.queue_stats()[QUEUE]
    assert (stats.active, stats.locked) == (0, 0)
    lines = [
        json.loads(line) for line in (tmp_path / "hops" / "work.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 6
    assert all(r["enqueued"] <= r["received"] <= r["invoked"] <= r["settled"] for r in lines)


async def test_a_failing_invocation_is_abandoned_and_redelivered(
    broker: Broker, writer: BrokerWriter
) -> None:
    deliveries: list[int] = []

    async def handler(msg: func.ServiceBusMessage) -> None:
        deliveries.append(msg.delivery_count or 0)
        if len(deliveries) == 1:
            raise RuntimeError("first try fails")

    broker.send(QUEUE, b"once", message_id="m-1")
    spec = queue_function(handler)
    pump = ServiceBusPump(spec, model_with(spec), broker, owner="test", writer=writer)
    await run_until(pump, lambda: broker.queue_stats()[QUEUE].completed_total == 1)
    assert deliveries == [1, 2]


async def test_the_pump_keeps_at_most_max_concurrent_calls_in_flight(
    broker: Broker, writer: BrokerWriter
) -> None:
    in_flight = 0
    peak = 0

    async def handler(msg: func.ServiceBusMessage) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1

    broker.send_batch(QUEUE, [spec_of(n) for n in range(12)])
    spec = queue_function(handler)
    pump = ServiceBusPump(spec, model_with(spec, concurrency=3), broker, owner="t", writer=writer)
    await run_until(pump, lambda: broker.queue_stats()[QUEUE].completed_total == 12)
    assert peak == 3


async def test_the_event_pump_reads_every_partition_and_checkpoints_each_batch(
    broker: Broker, writer: BrokerWriter
) -> None:
    received: list[bytes] = []

    async def handler(events: list[func.EventHubEvent]) -> None:
        received.extend(e.get_body() for e in events)

    trigger = {"type": EVENT_HUB, "eventHubName": HUB, "consumerGroup": "$Default"}
    spec = FunctionSpec("ingest", EVENT_HUB, trigger, handler)
    bodies = [f"event-{n}".encode() for n in range(10)]
    broker.publish_batch(HUB, [EventSpec(body=b) for b in bodies])  # round-robin: both partitions
    pump = EventHubPump(spec, model_with(spec, batch=3), broker, owner="t", writer=writer)

    def caught_up() -> bool:
        return sum(p.backlog for p in broker.hub_stats(HUB, "$Default").values()) == 0

    await run_until(pump, caught_up)
    assert sorted(received) == sorted(bodies)
    # A clean stop hands the partitions back for the next instance.
    assert all(p.owner is None for p in broker.hub_stats(HUB, "$Default").values())


async def test_a_busy_broker_fails_a_batch_of_sends_once_not_once_per_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "busy.sqlite3"
    with Broker(path, busy_timeout_s=0.3) as busy:
        busy.ensure_queue(QUEUE)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock throughout
        attempts: list[int] = []
        send_batch = busy.send_batch

        def counted(queue: str, specs: Any) -> list[bool]:
            attempts.append(len(specs))
            return send_batch(queue, specs)

        busy.send_batch = counted  # type: ignore[method-assign]
        writer = BrokerWriter(busy)
        try:
            results = await asyncio.gather(
                *(writer.send(QUEUE, SendSpec(b"x", f"m-{n}")) for n in range(6)),
                return_exceptions=True,
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            await writer.close()
    assert all(isinstance(r, TransientError) for r in results), results
    # Each group waits out the busy file once; nobody waits again one by one after it.
    assert sum(attempts) == 6, attempts


def test_the_decided_time_is_read_from_the_environment_or_left_out() -> None:
    """The host passes the scaler's decision time; a worker started by hand has none, and a
    value that is not a number is left out of the timings rather than stopping the worker."""
    assert decided_at({DECIDED_AT_ENV: "1765000000.250000"}) == 1765000000.25
    assert decided_at({}) is None
    assert decided_at({DECIDED_AT_ENV: ""}) is None
    assert decided_at({DECIDED_AT_ENV: "soon"}) is None
