"""The Event Hubs trigger's pump: partition leases, batches per partition invoked concurrently,
checkpoints after the function returns, and the function's retry policy on a failing batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from devhost.appmodel import (
    EXPONENTIAL_BACKOFF,
    AppModel,
    FunctionSpec,
    RetryPolicy,
)
from devhost.bindings import event_hub_events
from devhost.broker import Broker, LeaseLost, StoredEvent
from devhost.broker.publisher import BrokerWriter
from devhost.pump import IDLE_WAIT_S, LEASE_S, RECEIVE_RETRY_S, HopLog, Pump, sleep_unless_stopped

log = logging.getLogger("devhost.worker")

RETRY_WITHOUT_POLICY = RetryPolicy(
    EXPONENTIAL_BACKOFF, -1, minimum_interval_s=2.0, maximum_interval_s=60.0
)
"""How the event pump retries a failing batch of a function with no retry policy: without
bound, waiting 2 s, 4 s, ... up to a minute."""


@dataclass
class _FailedBatch:
    """A partition's batch whose invocation failed: where it starts, its size, its attempts."""

    first_sequence: int
    size: int
    attempts: int = 0


class EventHubPump(Pump):
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
        # When the leases are next renewed, on the monotonic clock: a wall clock set back
        # would otherwise hold renewals off until the leases had expired.
        renew_at = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= renew_at:
                    partitions = await self.writer.call(
                        self.broker.claim_partitions,
                        self.hub,
                        self.group,
                        self.owner,
                        lease_s=LEASE_S,
                    )
                    renew_at = time.monotonic() + LEASE_S / 3
                    self._forget_all_but(partitions)
                now = time.monotonic()
                due = {p: self._read_size(p) for p in partitions if self._due(p, now)}
                batches, lost = await asyncio.to_thread(self._read, due)
                if lost:
                    renew_at = 0.0
                self._after_read(due, batches)
                if not batches:
                    if not lost:
                        renew_in = renew_at - time.monotonic()
                        wait_s = self._idle_wait_s(partitions, renew_in)
                        waiter = asyncio.create_task(self.broker.wait_for_events(self.hub, wait_s))
                        await sleep_unless_stopped(stop, waiter)
                    continue
                outcomes = await asyncio.gather(
                    *(self._one_batch(p, events) for p, events in batches.items()),
                    return_exceptions=True,
                )
                for partition, outcome in zip(batches, outcomes, strict=True):
                    if isinstance(outcome, LeaseLost):
                        renew_at = 0.0
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
