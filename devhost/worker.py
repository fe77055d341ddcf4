"""A worker process: one instance of one queue- or hub-triggered function.

It receives from the broker with peek-lock, keeps up to host.json's ``maxConcurrentCalls``
invocations in flight, renews locks while the function runs (up to
``maxAutoLockRenewalDuration``), completes on return and abandons on an exception: the same
contract the Functions host keeps with ``autoCompleteMessages``. Run as
``python -m devhost.worker --function NAME --workdir DIR --instance ID``.

Every write to the broker - receive, complete, abandon, renew, checkpoint, and the function's
own sends through ``BrokerPublisher`` - goes through the process's one ``BrokerWriter``, which
group-commits what arrives together (see ``devhost.broker.publisher``). Reads that take no
write lock (event reads, the idle check) stay off it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from devhost.appmodel import (
    EVENT_HUB,
    EXPONENTIAL_BACKOFF,
    SERVICE_BUS,
    AppModel,
    FunctionSpec,
    RetryPolicy,
    load_app,
)
from devhost.bindings import event_hub_events, service_bus_message
from devhost.broker import Broker, LeaseLost, LockLost, ReceivedMessage, StoredEvent
from devhost.broker.publisher import BrokerPublisher, BrokerWriter
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.lifeline import die_with_parent
from devhost.settings import DevhostSettings
from devhost.startup import DECIDED_AT_ENV, process_started_at
from shared import bootstrap
from shared.adapters.local.sqlite import can_write, storage_problem
from shared.errors import TransientError
from shared.telemetry.redaction import redact

log = logging.getLogger("devhost.worker")

DRAIN_TIMEOUT_S = 30.0
IDLE_WAIT_S = 1.0
LEASE_S = 10.0
RECEIVE_RETRY_S = 0.5
HOP_LOG_ENV = "DEVHOST_HOP_LOG"
"""A directory: when set, each worker writes one JSON line of timings per invocation there."""
PROFILE_ENV = "DEVHOST_PROFILE"
"""A directory: when set, each worker profiles its event loop's thread (cProfile) and writes
``<function>-<instance>-<pid>.prof`` there as it stops (benchmarks' flame graphs)."""
RETRY_WITHOUT_POLICY = RetryPolicy(
    EXPONENTIAL_BACKOFF, -1, minimum_interval_s=2.0, maximum_interval_s=60.0
)
"""How the event pump retries a failing batch of a function with no retry policy: without
bound, waiting 2 s, 4 s, ... up to a minute."""
EXIT_CANNOT_WRITE = 74
"""The exit status that tells the host the file system refuses this worker's writes (a full
disk, a read-only workdir): starting the worker again would fail the same way."""
ORPHAN_GRACE_S = DRAIN_TIMEOUT_S + 5.0
"""How long a worker whose host died may drain before it exits regardless."""


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


async def _sleep_unless_stopped(stop: asyncio.Event, waiting: asyncio.Task[Any]) -> None:
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


class _Pump:
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


class ServiceBusPump(_Pump):
    """Feeds one queue's messages to one function, like the Service Bus trigger listener."""

    def __init__(
        self,
        spec: FunctionSpec,
        model: AppModel,
        broker: Broker,
        *,
        owner: str,
        writer: BrokerWriter | None = None,
        hop_log: HopLog | None = None,
    ) -> None:
        super().__init__(spec, broker, owner=owner, writer=writer, hop_log=hop_log)
        self.queue = spec.source
        self.max_in_flight = max(1, model.host.max_concurrent_calls)
        self.renew_for_s = model.host.max_auto_lock_renewal_s
        self.timeout_s = model.host.function_timeout_s
        self.auto_complete = model.host.auto_complete_messages
        self._in_flight: set[asyncio.Task[None]] = set()
        self.invocations = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and invoke until ``stop`` is set, then let in-flight invocations finish."""
        while not stop.is_set():
            free = self.max_in_flight - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await self.writer.call(
                    self.broker.receive, self.queue, max_messages=free, owner=self.owner
                )
            except TransientError as exc:
                # A broker busy past its timeout: nothing was locked; try again shortly.
                log.warning("%s: receive failed (%s); retrying", self.spec.name, exc)
                await _sleep_unless_stopped(
                    stop, asyncio.create_task(asyncio.sleep(RECEIVE_RETRY_S))
                )
                continue
            if not messages:
                waiter = asyncio.create_task(self.broker.wait_for_messages(self.queue, IDLE_WAIT_S))
                await _sleep_unless_stopped(stop, waiter)
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
                self.spec.user_function(service_bus_message(message, function=self.spec.name)),
                timeout=self.timeout_s,
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
            await self._stop_renewing(renewer)
            await self._abandon(message, reason)
            return
        finally:
            self.invocations += 1
        await self._stop_renewing(renewer)
        finished = time.time()
        if self.auto_complete:
            await self._complete(message)
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

    async def _complete(self, message: ReceivedMessage) -> None:
        try:
            done = await self.writer.complete(self.queue, message.lock_token)
        except Exception as exc:
            # The message comes back when its lock expires; the pipeline finds its work done.
            log.warning(
                "could not complete %s (%s: %s); it will be redelivered",
                message.message_id,
                type(exc).__name__,
                exc,
            )
            return
        if not done:
            log.warning(
                "lock lost before completing %s; it will be redelivered", message.message_id
            )

    async def _abandon(self, message: ReceivedMessage, reason: str) -> None:
        try:
            await self.writer.call(
                self.broker.abandon, self.queue, message.lock_token, reason=reason
            )
        except Exception as exc:  # LockLost included: it is redelivered either way
            log.warning(
                "could not abandon %s (%s: %s); its lock will expire",
                message.message_id,
                type(exc).__name__,
                exc,
            )

    @staticmethod
    async def _stop_renewing(renewer: asyncio.Task[None]) -> None:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer

    async def _renew(self, message: ReceivedMessage) -> None:
        """Renew the lock every half lock span until ``renew_for_s`` has passed.

        The span is read once, from the lock as granted, and time is measured on the monotonic
        clock: a wall clock set back would otherwise stretch the wait past the lock's expiry
        (the broker shortens such a lock), and the message would be delivered twice.
        """
        started = time.monotonic()
        lock_span = min(300.0, max(0.2, message.locked_until - time.time()))
        while True:
            await asyncio.sleep(lock_span / 2)
            if time.monotonic() - started > self.renew_for_s:
                return
            try:
                await self.writer.call(self.broker.renew_lock, self.queue, message.lock_token)
            except LockLost:
                return
            except TransientError as exc:
                # Try again at the next half-span; the lock has that much left.
                log.warning("could not renew the lock of %s (%s)", message.message_id, exc)


@dataclass
class _FailedBatch:
    """A partition's batch whose invocation failed: where it starts, its size, its attempts."""

    first_sequence: int
    size: int
    attempts: int = 0


class EventHubPump(_Pump):
    """Feeds partition batches to a cardinality-many function; checkpoints after it returns.

    The owned partitions are read together (one read each, off the event loop) and their
    batches invoked concurrently, one invocation per partition at a time, as the Functions host
    runs one event processor per partition.

    A batch whose invocation raises is retried as the function's retry policy says: the same
    events again, after the policy's delay, with the partition's checkpoint left where it was.
    The wait is per partition - the other partitions are read and invoked meanwhile and the
    leases are renewed - and once the policy's retries are spent the pump logs the batch's
    position and checkpoints past it, as the Functions host does. A function with no policy is
    retried without bound (``RETRY_WITHOUT_POLICY``).
    """

    def __init__(
        self,
        spec: FunctionSpec,
        model: AppModel,
        broker: Broker,
        *,
        owner: str,
        writer: BrokerWriter | None = None,
        hop_log: HopLog | None = None,
    ) -> None:
        super().__init__(spec, broker, owner=owner, writer=writer, hop_log=hop_log)
        self.hub = spec.source
        self.group = spec.consumer_group
        self.batch_size = max(1, model.host.max_event_batch_size)
        self.retry = spec.retry or RETRY_WITHOUT_POLICY
        self.invocations = 0
        self._failed: dict[int, _FailedBatch] = {}
        self._not_before: dict[int, float] = {}  # partition -> time.monotonic() to read again

    async def run(self, stop: asyncio.Event) -> None:
        """Claim partitions, read and invoke until ``stop`` is set; release them on the way out."""
        partitions: list[int] = []
        claimed_at = 0.0
        try:
            while not stop.is_set():
                if time.time() - claimed_at > LEASE_S / 3:
                    partitions = await self.writer.call(
                        self.broker.claim_partitions,
                        self.hub,
                        self.group,
                        self.owner,
                        lease_s=LEASE_S,
                    )
                    claimed_at = time.time()
                    self._forget_all_but(partitions)
                now = time.monotonic()
                due = {p: self._read_size(p) for p in partitions if self._due(p, now)}
                batches, lost = await asyncio.to_thread(self._read, due)
                if lost:
                    claimed_at = 0.0
                self._after_read(due, batches)
                if not batches:
                    if not lost:
                        renew_in = claimed_at + LEASE_S / 3 - time.time()
                        wait_s = self._idle_wait_s(partitions, renew_in)
                        waiter = asyncio.create_task(self.broker.wait_for_events(self.hub, wait_s))
                        await _sleep_unless_stopped(stop, waiter)
                    continue
                outcomes = await asyncio.gather(
                    *(self._one_batch(p, events) for p, events in batches.items()),
                    return_exceptions=True,
                )
                for partition, outcome in zip(batches, outcomes, strict=True):
                    if isinstance(outcome, LeaseLost):
                        claimed_at = 0.0
                        self._forget(partition)
                    elif isinstance(outcome, BaseException):
                        # The checkpoint did not go through; the batch is read again shortly.
                        log.warning(
                            "%s: checkpoint of partition %d failed (%s); reading it again",
                            self.spec.name,
                            partition,
                            type(outcome).__name__,
                        )
                        self._not_before[partition] = time.monotonic() + RECEIVE_RETRY_S
        finally:
            await self.writer.call(self.broker.release_partitions, self.hub, self.group, self.owner)

    def _due(self, partition: int, now: float) -> bool:
        return self._not_before.get(partition, 0.0) <= now

    def _read_size(self, partition: int) -> int:
        """A failed batch is read again at its own size, so exactly its events come back."""
        failed = self._failed.get(partition)
        return failed.size if failed else self.batch_size

    def _idle_wait_s(self, partitions: list[int], renew_in: float) -> float:
        """How long to wait for new events: at most IDLE_WAIT_S, and no later than the next
        retry or lease renewal is due."""
        now = time.monotonic()
        waits = [self._not_before[p] - now for p in partitions if p in self._not_before]
        return max(0.0, min([IDLE_WAIT_S, renew_in, *waits]))

    def _forget(self, partition: int) -> None:
        self._failed.pop(partition, None)
        self._not_before.pop(partition, None)

    def _forget_all_but(self, partitions: list[int]) -> None:
        """Drop the retry state of partitions this instance no longer holds."""
        for partition in set(self._failed) | set(self._not_before):
            if partition not in partitions:
                self._forget(partition)

    def _after_read(
        self, read: Mapping[int, int], batches: Mapping[int, list[StoredEvent]]
    ) -> None:
        """Clear the waits just served, and the record of a failed batch that no longer starts
        its partition (another instance checkpointed past it meanwhile, or retention removed
        it)."""
        for partition in read:
            self._not_before.pop(partition, None)
            failed = self._failed.get(partition)
            events = batches.get(partition)
            if failed and (not events or events[0].sequence_number != failed.first_sequence):
                del self._failed[partition]

    def _read(self, sizes: Mapping[int, int]) -> tuple[dict[int, list[StoredEvent]], bool]:
        """Each given partition's next batch of up to its size (runs on a thread); and whether a
        lease was lost."""
        batches: dict[int, list[StoredEvent]] = {}
        lost = False
        for partition, size in sizes.items():
            try:
                events = self.broker.read(
                    self.hub, self.group, partition, max_events=size, owner=self.owner
                )
            except LeaseLost:
                lost = True
                continue
            if events:
                batches[partition] = events
        return batches, lost

    async def _one_batch(self, partition: int, events: list[StoredEvent]) -> None:
        invoked = time.time()
        try:
            await self.spec.user_function(
                event_hub_events(events, consumer_group=self.group, function=self.spec.name)
            )
        except Exception as exc:
            if not self._retries_spent(partition, events, exc):
                return  # the partition waits for its retry; its checkpoint stays put
            succeeded = False
        else:
            self.invocations += 1
            succeeded = True
        finished = time.time()
        await self.writer.call(
            self.broker.checkpoint,
            self.hub,
            self.group,
            partition,
            events[-1].sequence_number,
            owner=self.owner,
        )
        self._forget(partition)
        if succeeded and self.hop_log.enabled:
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

    def _retries_spent(self, partition: int, events: list[StoredEvent], exc: Exception) -> bool:
        """Count a failed attempt on this batch; schedule its retry, or say the policy's
        retries are spent. Logs positions and the exception's type, never event bodies."""
        first, last = events[0].sequence_number, events[-1].sequence_number
        failed = self._failed.get(partition)
        if failed is None or failed.first_sequence != first:
            failed = self._failed[partition] = _FailedBatch(first, len(events))
        failed.attempts += 1
        retries = failed.attempts - 1
        if self.retry.exhausted(retries):
            log.warning(
                "%s failed on %s/%d events %d-%d (%d attempts, last: %s); retries spent,"
                " checkpointing past the batch",
                self.spec.name,
                self.hub,
                partition,
                first,
                last,
                failed.attempts,
                type(exc).__name__,
            )
            return True
        delay = self.retry.delay_s(retries + 1)
        self._not_before[partition] = time.monotonic() + delay
        log.warning(
            "%s failed on %s/%d events %d-%d (attempt %d: %s); retrying in %.1fs",
            self.spec.name,
            self.hub,
            partition,
            first,
            last,
            failed.attempts,
            type(exc).__name__,
            delay,
        )
        return False


def make_pump(
    spec: FunctionSpec,
    model: AppModel,
    broker: Broker,
    *,
    owner: str,
    writer: BrokerWriter | None = None,
    hop_log: HopLog | None = None,
) -> ServiceBusPump | EventHubPump:
    """The pump for ``spec``'s trigger; ``writer`` is shared with the process's publisher."""
    if spec.trigger_type == SERVICE_BUS:
        return ServiceBusPump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    if spec.trigger_type == EVENT_HUB:
        return EventHubPump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    raise ValueError(
        f"{spec.name}: devhost workers run queue and hub triggers, not {spec.trigger_type}"
    )


class CannotWrite(RuntimeError):
    """The worker's broker or store cannot be written."""


async def serve(
    function: str, workdir: Workdir, instance: str, *, model: AppModel | None = None
) -> None:
    """Run one instance of ``function`` until SIGTERM or SIGINT, then drain and shut down.

    ``model`` is the app as the worker template loaded it before forking this process; a
    worker started on its own loads it here. The instance builds its services (store, model
    client, telemetry) before its first receive, so its first message does not wait for them;
    a build that fails is only logged, and the first invocation tries again and fails there.
    """
    entered = time.time()
    for path in (workdir.broker, workdir.store):
        if not can_write(path):
            raise CannotWrite(f"{path} is read-only for this process")
    forked = model is not None
    if model is None:
        model = load_app(PROJECT_ROOT, os.environ)
    app_loaded = time.time()
    spec = model.by_name(function)
    broker = Broker(workdir.broker)
    writer = BrokerWriter(broker)
    bootstrap.configure(publisher=BrokerPublisher(broker, writer=writer))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    hop_log = HopLog.from_env(os.environ, function=function, instance=instance)
    try:
        await bootstrap.get_services()
    except Exception as exc:
        log.warning("services not built at start (%s: %s)", type(exc).__name__, exc)
    services_built = time.time()
    owner = f"{function}#{instance}@{os.getpid()}"
    pump = make_pump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    if hop_log.enabled:
        hop_log.record(
            kind="startup",
            source=spec.source,
            forked=forked,
            decided=_float_or_none(os.environ.get(DECIDED_AT_ENV)),
            started=process_started_at(),
            entered=entered,
            appLoaded=app_loaded,
            servicesBuilt=services_built,
            ready=time.time(),
        )
    log.info("worker %s#%s started (pid %d)", function, instance, os.getpid())
    try:
        await pump.run(stop)
    finally:
        await bootstrap.shutdown()
        await writer.close()
        stats = writer.stats
        hop_log.record(
            kind="writer",
            source=spec.source,
            operations=stats.operations,
            transactions=stats.transactions,
            largestBatch=stats.largest_batch,
        )
        hop_log.close()
        broker.close()


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def run_worker(
    function: str,
    workdir: Path,
    instance: str,
    *,
    model: AppModel | None = None,
    forked: bool = False,
) -> None:
    """Run one instance in this process until it is stopped: logging, the lifeline to its
    parent (the host, or the worker template that forked it), then :func:`serve`. Raises
    ``SystemExit(EXIT_CANNOT_WRITE)`` when the file system refuses its writes."""
    logging.basicConfig(
        level=DevhostSettings.from_env().log_level,
        format=f"%(asctime)s {function}#{instance} %(levelname)s %(name)s: %(message)s",
        force=forked,  # a forked instance replaces the template's log format with its own
    )
    # SIGTERM when the parent dies, however it dies: the worker drains and exits as on a stop.
    die_with_parent(grace_s=ORPHAN_GRACE_S)
    profile_dir = DevhostSettings.from_env().profile
    profiler = cProfile.Profile() if profile_dir else None
    try:
        if profiler is not None:
            profiler.enable()
        asyncio.run(serve(function, Workdir(workdir), instance, model=model))
    except Exception as exc:
        problem = str(exc) if isinstance(exc, CannotWrite) else storage_problem(exc)
        if problem is None:
            raise
        log.error("cannot write to %s: %s", workdir, problem)  # one line, no traceback
        raise SystemExit(EXIT_CANNOT_WRITE) from None
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(Path(profile_dir) / f"{function}-{instance}-{os.getpid()}.prof")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devhost.worker")
    parser.add_argument("--function", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--instance", default="0")
    args = parser.parse_args(argv)
    run_worker(args.function, args.workdir, args.instance)


if __name__ == "__main__":
    main()
