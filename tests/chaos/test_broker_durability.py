"""SIGKILL a process that is sending, completing and publishing; nothing it acknowledged is lost.

The child reports every call on a pipe only after the call returned, so a report means "the
broker acknowledged this". After the kill the database is reopened by a fresh broker: every
acknowledged send is still there (unless its complete had started), every acknowledged complete
is gone, every acknowledged event is in its partition, and the file passes an integrity check.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from devhost.broker import Broker

pytestmark = pytest.mark.chaos

QUEUE = "work"
HUB = "requests"
ROUNDS = 4


def churn(path: str, reports: Connection, round_no: int) -> None:
    """Child process: send, complete and publish forever, reporting each acknowledged call."""
    broker = Broker(path)  # never closed: the process dies by SIGKILL
    n = 0
    while True:
        message_id = f"r{round_no}-m{n}"
        broker.send(QUEUE, message_id.encode(), message_id=message_id)
        reports.send(("sent", message_id))
        if n % 2:
            for message in broker.receive(QUEUE, max_messages=1):
                reports.send(("completing", message.message_id))
                broker.complete(QUEUE, message.lock_token)
                reports.send(("completed", message.message_id))
        if n % 3 == 0:
            position = broker.publish(HUB, message_id.encode(), partition_key=message_id)
            reports.send(("published", position))
        n += 1


def run_and_kill(path: str, round_no: int, rng: random.Random) -> list[tuple[str, object]]:
    """Start a churning child, kill it at a random moment, return everything it reported."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=churn, args=(path, sender, round_no), daemon=True)
    child.start()
    sender.close()  # the child holds the only write end, so EOF follows its death
    reports: list[tuple[str, object]] = []
    try:
        if not receiver.poll(60):
            raise AssertionError("the child never acknowledged anything")
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:
            if receiver.poll(0.005):
                reports.append(receiver.recv())
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        while True:
            try:
                reports.append(receiver.recv())
            except EOFError:
                break
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
            child.join(30)
        child.close()
    return reports


def test_acknowledged_work_survives_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.db")
    with Broker(path) as broker:
        broker.ensure_queue(QUEUE, lock_duration_s=600.0)
        broker.ensure_hub(HUB, partitions=4)
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    sent: set[str] = set()
    completing: set[str] = set()
    completed: set[str] = set()
    published: list[tuple[int, int]] = []
    for round_no in range(ROUNDS):
        for kind, value in run_and_kill(path, round_no, rng):
            if kind == "sent":
                sent.add(str(value))
            elif kind == "completing":
                completing.add(str(value))
            elif kind == "completed":
                completed.add(str(value))
            else:
                partition, sequence, _ = value  # type: ignore[misc]
                published.append((partition, sequence))
        with Broker(path) as reopened:
            conn = reopened._conn()
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {row[0] for row in conn.execute("SELECT message_id FROM sb_messages")}
            missing = sent - stored - completing
            assert not missing, f"seed {seed}: acknowledged sends lost: {sorted(missing)[:5]}"
            revived = completed & stored
            assert not revived, f"seed {seed}: completed messages came back: {sorted(revived)}"
            assert reopened.queue_stats()[QUEUE].sent_total >= len(sent)
            last = {p: s.last_sequence for p, s in reopened.hub_stats(HUB, "$Default").items()}
            lost_events = [(p, s) for p, s in published if last[p] < s]
            assert not lost_events, f"seed {seed}: acknowledged events lost: {lost_events[:5]}"
            # The reopened file keeps working.
            assert reopened.send(QUEUE, b"after", message_id=f"after-{round_no}")
    assert len(sent) > ROUNDS, f"seed {seed}: the children did too little to prove anything"
    assert completed, f"seed {seed}: no complete was ever acknowledged"
