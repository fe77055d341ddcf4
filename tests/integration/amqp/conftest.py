"""A devhost AMQP server on 127.0.0.1 for the conformance suite, over a broker of its own.

Senders are opened with ``keep_alive=None``: the SDK's keep-alive thread only makes
``close()`` wait up to a second for it, and the tests close many senders.

Each test gets a fresh SQLite broker and a server on a port the OS picks. The broker runs on a
clock the test can move (``devhost.clock.advance(s)``), so lock expiry and scheduled delivery
are tested by moving time, not by waiting for it. Proton (``python-qpid-proton``) is required:
a missing build fails these tests at import, it never skips them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devhost.amqp import AmqpConfig, AmqpServer
from devhost.broker import Broker

QUEUE = "orders"
QUEUE_LOCK_S = 30.0
QUEUE_MAX_DELIVERY = 3
TOPIC = "notices"
HUB = "requests"
HUB_PARTITIONS = 4


class ManualClock:
    """The wall clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


@dataclass
class Devhost:
    """A running AMQP server and the broker behind it."""

    broker: Broker
    server: AmqpServer
    clock: ManualClock
    path: Path

    @property
    def connection_string(self) -> str:
        return self.server.connection_string()

    @property
    def namespace(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def other_process(self) -> Broker:
        """A second broker handle on the same file, as a devhost worker process has."""
        return Broker(self.path, clock=self.clock)


def start_devhost(tmp_path: Path, config: AmqpConfig | None = None) -> Devhost:
    clock = ManualClock()
    path = tmp_path / "broker.sqlite3"
    broker = Broker(path, clock=clock)
    broker.ensure_queue(
        QUEUE,
        lock_duration_s=QUEUE_LOCK_S,
        max_delivery_count=QUEUE_MAX_DELIVERY,
        duplicate_window_s=600.0,
    )
    broker.ensure_queue("intent", lock_duration_s=60.0)
    broker.ensure_topic(TOPIC)
    broker.ensure_subscription(TOPIC, "all")
    broker.ensure_subscription(TOPIC, "urgent", rules=[{"subject": "urgent"}])
    broker.ensure_hub(HUB, partitions=HUB_PARTITIONS)
    server = AmqpServer(broker, config or AmqpConfig(port=0))
    server.start()
    return Devhost(broker=broker, server=server, clock=clock, path=path)


@pytest.fixture
def devhost(tmp_path: Path) -> Iterator[Devhost]:
    host = start_devhost(tmp_path)
    try:
        yield host
    finally:
        host.server.stop()
        host.broker.close()
