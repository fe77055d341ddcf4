"""Several worker processes share one broker file: every message is completed exactly once."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

from devhost.broker import Broker, LockLost, SendSpec

QUEUE = "work"
PRODUCERS = 2
CONSUMERS = 4
PER_PRODUCER = 1000
TOTAL = PRODUCERS * PER_PRODUCER


def _all_consumers_ready(ready: str) -> None:
    """Wait until every consumer process has opened the broker (spawned processes start
    seconds apart on a busy machine; a late one would find the work already done)."""
    deadline = time.monotonic() + 60
    while len(list(Path(ready).iterdir())) < CONSUMERS:
        if time.monotonic() > deadline:
            raise TimeoutError("consumers did not start")
        time.sleep(0.01)


def produce(path: str, producer: int, ready: str) -> int:
    """Send this producer's share in small batches; return how many were accepted."""
    accepted = 0
    _all_consumers_ready(ready)
    with Broker(path) as broker:
        ids = [f"p{producer}-m{n}" for n in range(PER_PRODUCER)]
        for start in range(0, len(ids), 20):
            chunk = ids[start : start + 20]
            flags = broker.send_batch(QUEUE, [SendSpec(i.encode(), i) for i in chunk])
            accepted += sum(flags)
    return accepted


def consume(path: str, ready: str) -> list[str]:
    """Receive and complete until every message has been sent and settled; return what this
    process completed (only completes that returned without LockLost count)."""
    completed: list[str] = []
    owner = f"pid-{os.getpid()}"
    deadline = time.monotonic() + 90
    with Broker(path) as broker:
        (Path(ready) / owner).touch()
        while time.monotonic() < deadline:
            messages = broker.receive(QUEUE, max_messages=8, owner=owner)
            if not messages:
                stats = broker.queue_stats()[QUEUE]
                if stats.sent_total >= TOTAL and stats.active == 0 and stats.locked == 0:
                    break
                time.sleep(0.002)
                continue
            for message in messages:
                try:
                    broker.complete(QUEUE, message.lock_token)
                except LockLost:
                    continue
                completed.append(message.message_id)
    return completed


def test_concurrent_processes_complete_every_message_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.db")
    with Broker(path) as broker:
        broker.ensure_queue(QUEUE, lock_duration_s=120.0)
    ready = tmp_path / "ready"
    ready.mkdir()
    context = multiprocessing.get_context("spawn")
    with context.Pool(PRODUCERS + CONSUMERS) as pool:
        consumers = [pool.apply_async(consume, (path, str(ready))) for _ in range(CONSUMERS)]
        producers = [pool.apply_async(produce, (path, p, str(ready))) for p in range(PRODUCERS)]
        accepted = sum(result.get(timeout=100) for result in producers)
        per_consumer = [result.get(timeout=100) for result in consumers]
    assert accepted == TOTAL
    counts = Counter(message_id for done in per_consumer for message_id in done)
    expected = {f"p{p}-m{n}" for p in range(PRODUCERS) for n in range(PER_PRODUCER)}
    assert set(counts) == expected, "a message was lost"
    assert max(counts.values()) == 1, "a message was completed twice"
    # Which consumer takes which message is up to the scheduler: on a busy machine one process
    # can take them all, so sharing is not asserted; no loss and no double completion are.
    with Broker(path) as broker:
        stats = broker.queue_stats()[QUEUE]
    assert (stats.sent_total, stats.completed_total, stats.active, stats.locked) == (
        TOTAL,
        TOTAL,
        0,
        0,
    )


def complete_one(broker: Broker, report: Connection) -> None:
    """Forked child: use the parent's Broker object, which must open its own connection."""
    [message] = broker.receive(QUEUE)
    broker.complete(QUEUE, message.lock_token)
    broker.close()
    report.send(message.message_id)
    report.close()


def test_a_broker_inherited_through_fork_works_in_the_child_and_stays_usable_in_the_parent(
    tmp_path: Path,
) -> None:
    with Broker(tmp_path / "broker.db") as broker:
        broker.ensure_queue(QUEUE)
        broker.send(QUEUE, b"x", message_id="forked")  # the parent's connection is open now
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=complete_one, args=(broker, sender))
        child.start()
        sender.close()
        assert receiver.poll(30)
        assert receiver.recv() == "forked"
        child.join(30)
        receiver.close()
        assert child.exitcode == 0
        stats = broker.queue_stats()[QUEUE]
        assert (stats.completed_total, stats.active, stats.locked) == (1, 0, 0)
        assert broker.send(QUEUE, b"y", message_id="after-fork")
        assert broker._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_threads_sharing_one_broker_object_each_complete_distinct_messages(
    tmp_path: Path,
) -> None:
    with Broker(tmp_path / "broker.db") as broker:
        broker.ensure_queue(QUEUE)
        ids = [f"t-{n}" for n in range(400)]
        broker.send_batch(QUEUE, [SendSpec(i.encode(), i) for i in ids])
        completed: list[list[str]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def work(slot: int) -> None:
            try:
                while messages := broker.receive(QUEUE, max_messages=4):
                    for message in messages:
                        broker.complete(QUEUE, message.lock_token)
                        completed[slot].append(message.message_id)
            except BaseException as error:  # surfaced by the assertion below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        counts = Counter(message_id for done in completed for message_id in done)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1
