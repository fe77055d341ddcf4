"""A worker process: one instance of one queue- or hub-triggered function.

It receives from the broker with peek-lock, keeps up to host.json's ``maxConcurrentCalls``
invocations in flight, renews locks while the function runs (up to
``maxAutoLockRenewalDuration``), completes on return and abandons on an exception: the same
contract the Functions host keeps with ``autoCompleteMessages``. Run as
``python -m devhost.worker --function NAME --workdir DIR --instance ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from devhost.appmodel import EVENT_HUB, SERVICE_BUS, AppModel, FunctionSpec, load_app
from devhost.bindings import event_hub_event, service_bus_message
from devhost.broker import Broker, LeaseLost, LockLost, ReceivedMessage
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.publisher import BrokerPublisher
from shared import bootstrap
from shared.redaction import redact

log = logging.getLogger("devhost.worker")

DRAIN_TIMEOUT_S = 30.0
IDLE_WAIT_S = 1.0
LEASE_S = 10.0
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
        directory = environ.get(HOP_LOG_ENV)
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


class ServiceBusPump:
    """Feeds one queue's messages to one function, like the Service Bus trigger listener."""

    def __init__(
        self,
        spec: FunctionSpec,
        model: AppModel,
        broker: Broker,
        *,
        owner: str,
        hop_log: HopLog | None = None,
    ) -> None:
        self.spec = spec
        self.queue = spec.source
        self.hop_log = hop_log or HopLog()
        self.broker = broker
        self.owner = owner
        self.max_in_flight = max(1, model.host.max_concurrent_calls)
        self.renew_for_s = model.host.max_auto_lock_renewal_s
        self.timeout_s = model.host.function_timeout_s
        self.auto_complete = model.host.auto_complete_messages
        self._in_flight: set[asyncio.Task[None]] = set()
        self.invocations = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            messages = await asyncio.to_thread(
                self.broker.receive, self.queue, max_messages=free, owner=self.owner
            )
            if not messages:
                waiter = asyncio.create_task(self.broker.wait_for_messages(self.queue, IDLE_WAIT_S))
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in (waiter, stopper):
                    task.cancel()
                continue
            received = time.time()
            for message in messages:
                task = asyncio.create_task(self._invoke(message, received))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        await self.drain()

    async def drain(self) -> None:
        """Let in-flight invocations finish; unfinished ones keep their locks until expiry."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=DRAIN_TIMEOUT_S)

    async def _invoke(self, message: ReceivedMessage, received: float) -> None:
        renewer = asyncio.create_task(self._renew(message))
        invoked = time.time()
        try:
            await asyncio.wait_for(
                self.spec.user_function(service_bus_message(message)), timeout=self.timeout_s
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {redact(str(exc))}"[:1000]
            log.warning(
                "%s failed on message %s (delivery %d): %s",
                self.spec.name,
                message.message_id,
                message.delivery_count,
                reason,
            )
            renewer.cancel()
            with contextlib.suppress(LockLost):
                await asyncio.to_thread(
                    self.broker.abandon, self.queue, message.lock_token, reason=reason
                )
            return
        finally:
            renewer.cancel()
            self.invocations += 1
        finished = time.time()
        if self.auto_complete:
            try:
                await asyncio.to_thread(self.broker.complete, self.queue, message.lock_token)
            except LockLost:
                log.warning("lock lost before completing %s; it will be redelivered", message.message_id)
        if self.hop_log.enabled:
            self.hop_log.record(
                kind="message",
                source=self.queue,
                deliveryCount=message.delivery_count,
                enqueued=message.enqueued_time,
                received=received,
                invoked=invoked,
                finished=finished,
                settled=time.time(),
            )

    async def _renew(self, message: ReceivedMessage) -> None:
        started = time.time()
        locked_until = message.locked_until
        while True:
            lock_span = max(0.2, locked_until - time.time())
            await asyncio.sleep(lock_span / 2)
            if time.time() - started > self.renew_for_s:
                return
            try:
                locked_until = await asyncio.to_thread(
                    self.broker.renew_lock, self.queue, message.lock_token
                )
            except LockLost:
                return


class EventHubPump:
    """Feeds partition batches to a cardinality-many function; checkpoints after it returns."""

    def __init__(
        self,
        spec: FunctionSpec,
        model: AppModel,
        broker: Broker,
        *,
        owner: str,
        hop_log: HopLog | None = None,
    ) -> None:
        self.spec = spec
        self.hub = spec.source
        self.hop_log = hop_log or HopLog()
        self.group = str(spec.trigger.get("consumerGroup") or "$Default")
        self.broker = broker
        self.owner = owner
        self.batch_size = max(1, model.host.max_event_batch_size)
        self.invocations = 0

    async def run(self, stop: asyncio.Event) -> None:
        partitions: list[int] = []
        claimed_at = 0.0
        failures = 0
        try:
            while not stop.is_set():
                if time.time() - claimed_at > LEASE_S / 3:
                    partitions = await asyncio.to_thread(
                        self.broker.claim_partitions, self.hub, self.group, self.owner, lease_s=LEASE_S
                    )
                    claimed_at = time.time()
                worked = False
                for partition in partitions:
                    try:
                        worked |= await self._one_batch(partition)
                        failures = 0
                    except LeaseLost:
                        claimed_at = 0.0
                    except Exception as exc:
                        failures += 1
                        delay = min(60.0, 2.0 ** min(failures, 6))
                        log.warning("%s batch failed (%s); retrying in %.0fs", self.spec.name, type(exc).__name__, delay)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                if not worked:
                    waiter = asyncio.create_task(self.broker.wait_for_events(self.hub, IDLE_WAIT_S))
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (waiter, stopper):
                        task.cancel()
        finally:
            await asyncio.to_thread(self.broker.release_partitions, self.hub, self.group, self.owner)

    async def _one_batch(self, partition: int) -> bool:
        events = await asyncio.to_thread(
            self.broker.read, self.hub, self.group, partition, max_events=self.batch_size, owner=self.owner
        )
        if not events:
            return False
        invoked = time.time()
        await self.spec.user_function([event_hub_event(e, consumer_group=self.group) for e in events])
        self.invocations += 1
        finished = time.time()
        await asyncio.to_thread(
            self.broker.checkpoint,
            self.hub,
            self.group,
            partition,
            events[-1].sequence_number,
            owner=self.owner,
        )
        if self.hop_log.enabled:
            self.hop_log.record(
                kind="events",
                source=self.hub,
                events=len(events),
                enqueued=events[0].enqueued_time,
                enqueuedLast=events[-1].enqueued_time,
                invoked=invoked,
                finished=finished,
                settled=time.time(),
            )
        return True


def make_pump(
    spec: FunctionSpec,
    model: AppModel,
    broker: Broker,
    *,
    owner: str,
    hop_log: HopLog | None = None,
) -> ServiceBusPump | EventHubPump:
    if spec.trigger_type == SERVICE_BUS:
        return ServiceBusPump(spec, model, broker, owner=owner, hop_log=hop_log)
    if spec.trigger_type == EVENT_HUB:
        return EventHubPump(spec, model, broker, owner=owner, hop_log=hop_log)
    raise ValueError(f"{spec.name}: devhost workers run queue and hub triggers, not {spec.trigger_type}")


async def serve(function: str, workdir: Workdir, instance: str) -> None:
    model = load_app(PROJECT_ROOT, os.environ)
    spec = model.by_name(function)
    broker = Broker(workdir.broker)
    bootstrap.configure(publisher=BrokerPublisher(broker))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    hop_log = HopLog.from_env(os.environ, function=function, instance=instance)
    pump = make_pump(
        spec, model, broker, owner=f"{function}#{instance}@{os.getpid()}", hop_log=hop_log
    )
    log.info("worker %s#%s started (pid %d)", function, instance, os.getpid())
    try:
        await pump.run(stop)
    finally:
        hop_log.close()
        await bootstrap.shutdown()
        broker.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devhost.worker")
    parser.add_argument("--function", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--instance", default="0")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("DEVHOST_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s {args.function}#{args.instance} %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args.function, Workdir(args.workdir), args.instance))


if __name__ == "__main__":
    main()
