"""Doorbells: cross-process wake-ups, stale-socket clean-up, long paths, polling fallback."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.broker import Broker
from devhost.broker.doorbell import Doorbell, bell_directory, channel_token, ring

QUEUE = "intent"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for ``<dir>/bells/...`` to fit a unix socket address."""
    path = Path(tempfile.mkdtemp(prefix="bell-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def send_after(path: str, delay_s: float) -> float:
    """Child process: send one message after ``delay_s``; return when the send committed."""
    with Broker(path) as broker:
        time.sleep(delay_s)
        broker.send(QUEUE, b"x", message_id="m-1")
        return time.monotonic()


async def test_a_send_in_another_process_wakes_the_waiting_receiver_at_once(
    short_dir: Path,
) -> None:
    path = str(short_dir / "broker.db")
    with Broker(path) as broker:
        broker.ensure_queue(QUEUE)
        assert await broker.wait_for_messages(QUEUE, timeout_s=0.01) is False  # bell bound
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            pending = pool.apply_async(send_after, (path, 0.5))
            woke = await broker.wait_for_messages(QUEUE, timeout_s=20.0)
            woke_at = time.monotonic()
            sent_at = pending.get(timeout=30)
        assert woke is True
        # Woken by the ring, not by the 20 s timeout (generous bound for a loaded machine).
        assert woke_at - sent_at < 10
        assert [m.message_id for m in broker.receive(QUEUE)] == ["m-1"]


async def test_one_ring_wakes_every_coroutine_waiting_on_the_queue(short_dir: Path) -> None:
    with Broker(short_dir / "broker.db") as broker:
        broker.ensure_queue(QUEUE)
        waiters = [
            asyncio.create_task(broker.wait_for_messages(QUEUE, timeout_s=10.0)) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        broker.send(QUEUE, b"x", message_id="m-1")
        results = await asyncio.gather(*waiters)
        assert results == [True, True, True]
        assert time.monotonic() - started < 5.0


def test_bells_live_under_the_broker_directory_when_the_path_is_short(short_dir: Path) -> None:
    assert bell_directory(short_dir) == short_dir.resolve() / "bells"


def test_a_long_broker_path_gets_a_short_bell_directory_that_every_process_agrees_on(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 120)
    chosen = bell_directory(deep)
    assert chosen == bell_directory(deep)
    assert chosen != bell_directory(tmp_path / ("e" * 120))
    assert len(os.fsencode(chosen)) < 60
    bell = Doorbell(chosen, channel_token("q", QUEUE))
    try:
        assert ring(chosen, channel_token("q", QUEUE)) == 1
        assert bell.drain() is True
    finally:
        bell.close()
        shutil.rmtree(chosen, ignore_errors=True)
    assert not bell.path.exists()


def test_channel_tokens_keep_plain_names_and_digest_odd_ones() -> None:
    assert channel_token("q", "intent") == "q-intent"
    odd = [channel_token("q", name) for name in ("a.b", "a/b", "a b", "x" * 41)]
    assert len(set(odd)) == 4
    assert all("." not in token and "/" not in token for token in odd)
    assert channel_token("q", "intent") != channel_token("eh", "intent")
    with pytest.raises(ValueError, match="kind"):
        channel_token("Q.", "intent")


def test_ringing_removes_the_socket_file_of_a_dead_receiver(short_dir: Path) -> None:
    directory = short_dir / "bells"
    directory.mkdir()
    token = channel_token("q", QUEUE)
    stale = directory / f"{token}.999999.0.sock"
    # A socket file with no process behind it, as SIGKILL leaves one.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as orphan:
        orphan.bind(os.fspath(stale))
    live = Doorbell(directory, token)
    other = Doorbell(directory, channel_token("q", "intent-two"))
    try:
        assert stale.exists()
        assert ring(directory, token) == 1
        assert not stale.exists()
        assert live.drain() is True
        assert other.drain() is False  # a queue whose name shares the prefix is not rung
    finally:
        live.close()
        other.close()


def test_a_ring_sent_while_nobody_waits_is_kept_until_drained(short_dir: Path) -> None:
    token = channel_token("q", QUEUE)
    bell = Doorbell(short_dir, token)
    try:
        for _ in range(5):
            ring(short_dir, token)
        assert bell.drain() is True
        assert bell.drain() is False
    finally:
        bell.close()


async def test_waiting_still_works_by_polling_when_bells_cannot_be_created(
    short_dir: Path,
) -> None:
    (short_dir / "bells").write_text("not a directory")
    with Broker(short_dir / "broker.db") as broker:
        broker.ensure_queue(QUEUE)
        started = time.monotonic()
        assert await broker.wait_for_messages(QUEUE, timeout_s=0.1) is False
        assert time.monotonic() - started >= 0.09
        broker.send(QUEUE, b"x", message_id="m-1")  # ringing a missing directory is harmless
        assert await broker.wait_for_messages(QUEUE, timeout_s=5.0) is True
        assert len(broker.receive(QUEUE)) == 1
