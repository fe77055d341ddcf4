"""What every devhost trigger pump shares: the function, the broker, the process's one broker
writer, the hop log of per-invocation timings, and the idle wait that ends when the worker stops.
The pumps themselves are ``devhost.servicebus_pump`` and ``devhost.eventhub_pump``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from devhost.appmodel import (
    FunctionSpec,
)
from devhost.broker import Broker
from devhost.broker.publisher import BrokerWriter
from devhost.settings import DevhostSettings

log = logging.getLogger("devhost.worker")

DRAIN_TIMEOUT_S = 30.0
IDLE_WAIT_S = 1.0
LEASE_S = 10.0
RECEIVE_RETRY_S = 0.5
HOP_LOG_ENV = "DEVHOST_HOP_LOG"
"""A directory: when set, each worker writes one JSON line of timings per invocation there."""


class HopLog:
    """Per-invocation timings of one worker process, for benchmarks; off unless configured.

    Each record holds epoch timestamps (the broker's clock is the same wall clock) so a reader
    can tell how long a message waited between the broker committing it and the function
    starting on it. Lines are buffered and flushed on ``close``: the log costs no write per
    message, and a worker killed without a chance to close loses only its own timings.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._file: IO[str] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, function: str, instance: str) -> HopLog:
        directory = DevhostSettings.from_env(environ).hop_log
        if not directory:
            return cls(None)
        return cls(Path(directory) / f"{function}-{instance}-{os.getpid()}.jsonl")

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def record(self, **fields: Any) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1 << 16)
        self._file.write(json.dumps(fields, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def sleep_unless_stopped(stop: asyncio.Event, waiting: asyncio.Task[Any]) -> None:
    """Wait for ``waiting`` or ``stop``, whichever comes first; cancel what is left."""
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, stopper):
            task.cancel()
        outcomes = await asyncio.gather(waiting, stopper, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            # An idle wait that failed (the broker file unreadable for a moment) only means
            # the pump looks again; say so rather than lose the error.
            log.warning("waiting for work failed: %s: %s", type(outcome).__name__, outcome)
            await asyncio.sleep(RECEIVE_RETRY_S)  # and never spin on a wait that fails at once
            return


class Pump:
    """What every trigger's pump holds: its function, the broker, the one writer thread that
    carries the process's broker writes, the hop log, and the owner name it locks under."""

    def __init__(
        self,
        spec: FunctionSpec,
        broker: Broker,
        *,
        owner: str,
        writer: BrokerWriter | None,
        hop_log: HopLog | None,
    ) -> None:
        self.spec = spec
        self.broker = broker
        self.writer = writer or BrokerWriter(broker)
        self.hop_log = hop_log or HopLog()
        self.owner = owner
