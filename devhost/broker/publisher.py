"""The ``Publisher`` port over the devhost broker, and the one writer thread behind it.

``BrokerPublisher`` is what the Service Bus adapter is in Azure. Every mutating broker call of a
devhost process - its sends, and in a worker also its receives, settlements, lock renewals and
checkpoints - goes through one ``BrokerWriter``: a single thread that runs them in order and
*group-commits* what piled up while the previous transaction was on disk. Sends to one queue
become one ``send_batch`` transaction, completions on one queue one ``complete_batch``.

Why one thread and group commit: the broker is one SQLite file shared by every devhost process,
and a write transaction holds its write lock through the WAL fsync (``synchronous=FULL``).
Several threads of one process writing at once only queue for that lock, and SQLite's busy
handler waits for it in sleeps of 1, 2, 5, 10 ms and more, so contention shows up as
milliseconds added to hops. One writer per process leaves at most one waiter per process, and
batching cuts the number of transactions (and fsyncs) as the load grows, with no timer: a lone
call goes out at once, exactly as before.

Durability does not change: a caller's ``await`` returns only after the transaction holding its
operation has committed, so an acknowledged send or completion is on disk, as with a direct
call. A batch fails as a whole (SQLite rolls it back); its operations are then retried one by
one, so one bad message fails only its own sender.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from devhost.broker import Broker, SendSpec
from shared.domain.messages import MESSAGE_OVERHEAD_BYTES, SERVICE_BUS_MAX_BYTES, check_message_size
from shared.errors import ConfigError, TransientError
from shared.ports import OutboundMessage

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""The most operations one group-committed transaction carries."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass
class WriterStats:
    """What a writer did: operations, and the transactions (calls into the broker) they took."""

    operations: int = 0
    transactions: int = 0
    largest_batch: int = 0

    def count(self, operations: int) -> None:
        self.operations += operations
        self.transactions += 1
        self.largest_batch = max(self.largest_batch, operations)


@dataclass
class _Send:
    queue: str
    spec: SendSpec
    future: concurrent.futures.Future[bool]


@dataclass
class _Complete:
    queue: str
    lock_token: str
    future: concurrent.futures.Future[bool]


@dataclass
class _Call:
    function: Callable[[], Any]
    future: concurrent.futures.Future[Any]


_Job = _Send | _Complete | _Call


@dataclass
class _Drained:
    """One round of jobs, grouped the way the thread runs them."""

    sends: dict[str, list[_Send]] = field(default_factory=lambda: defaultdict(list))
    calls: list[_Call] = field(default_factory=list)
    completes: dict[str, list[_Complete]] = field(default_factory=lambda: defaultdict(list))


class BrokerWriter:
    """Runs a process's mutating broker calls on one thread, group-committing sends and
    completions. Safe to use from any event loop and thread; the thread starts on first use and
    stops on :meth:`close` (after finishing what was submitted); later use starts it again."""

    def __init__(self, broker: Broker, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.broker = broker
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- what callers await ------------------------------------------------------------------

    async def send(self, queue: str, spec: SendSpec) -> bool:
        """Enqueue ``spec`` durably; False when the broker dropped it as a duplicate id."""
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._submit(_Send(queue, spec, future))
        return await asyncio.wrap_future(future)

    async def complete(self, queue: str, lock_token: str) -> bool:
        """Complete a locked message; False when its lock was already lost."""
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._submit(_Complete(queue, lock_token, future))
        return await asyncio.wrap_future(future)

    async def call(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run any other broker call (receive, abandon, renew, checkpoint...) on the thread."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._submit(_Call(lambda: function(*args, **kwargs), future))
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        """Finish every submitted operation, then stop the thread."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(thread.join)

    # -- the thread --------------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        with self._cond:
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="broker-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    # Stopping with nothing left; a later submit starts a new thread.
                    self._thread, self._stopping = None, False
                    return
                jobs, self._pending = self._pending, []
            try:
                self._run(_drain(jobs))
            except Exception as exc:
                # A bug here must not leave callers waiting forever: fail what is unanswered.
                log.exception("broker writer failed a round of %d operations", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _run(self, drained: _Drained) -> None:
        # Sends and receives first: they are on a conversation's path. Completions only free
        # the broker of finished messages, so they go last.
        for queue, sends in drained.sends.items():
            for start in range(0, len(sends), self.max_batch):
                self._send_group(queue, sends[start : start + self.max_batch])
        for call in drained.calls:
            self._settle(call.future, call.function)
        for queue, completes in drained.completes.items():
            for start in range(0, len(completes), self.max_batch):
                self._complete_group(queue, completes[start : start + self.max_batch])

    def _send_group(self, queue: str, sends: Sequence[_Send]) -> None:
        if len(sends) > 1:
            try:
                accepted = self.broker.send_batch(queue, [s.spec for s in sends])
            except TransientError as exc:
                # The file stayed busy for the whole wait: one by one would wait again, each.
                for send in sends:
                    send.future.set_exception(exc)
                return
            except Exception as exc:
                # Rolled back as a whole (one bad message); one by one, each gets its outcome.
                log.debug(
                    "batch of %d sends to %s failed (%s); retrying singly", len(sends), queue, exc
                )
            else:
                self.stats.count(len(sends))
                for send, flag in zip(sends, accepted, strict=True):
                    send.future.set_result(flag)
                return
        for send in sends:
            self._settle(send.future, functools.partial(self._send_one, queue, send.spec))

    def _complete_group(self, queue: str, completes: Sequence[_Complete]) -> None:
        if len(completes) > 1:
            try:
                done = self.broker.complete_batch(queue, [c.lock_token for c in completes])
            except TransientError as exc:
                for complete in completes:
                    complete.future.set_exception(exc)
                return
            except Exception as exc:
                log.debug(
                    "batch of %d completions on %s failed (%s); retrying singly",
                    len(completes),
                    queue,
                    exc,
                )
            else:
                self.stats.count(len(completes))
                for complete, flag in zip(completes, done, strict=True):
                    complete.future.set_result(flag)
                return
        for complete in completes:
            self._settle(
                complete.future, functools.partial(self._complete_one, queue, complete.lock_token)
            )

    def _send_one(self, queue: str, spec: SendSpec) -> bool:
        return self.broker.send_batch(queue, [spec])[0]

    def _complete_one(self, queue: str, lock_token: str) -> bool:
        return self.broker.complete_batch(queue, [lock_token])[0]

    def _settle(self, future: concurrent.futures.Future[Any], function: Callable[[], Any]) -> None:
        self.stats.count(1)
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller, never lost
            future.set_exception(exc)
        else:
            future.set_result(result)


def _drain(jobs: Sequence[_Job]) -> _Drained:
    """Group jobs by kind and queue, in submission order, leaving out cancelled ones."""
    drained = _Drained()
    for job in jobs:
        # A caller that was cancelled before its turn does not want the operation done.
        if not job.future.set_running_or_notify_cancel():
            continue
        if isinstance(job, _Send):
            drained.sends[job.queue].append(job)
        elif isinstance(job, _Complete):
            drained.completes[job.queue].append(job)
        else:
            drained.calls.append(job)
    return drained


class BrokerPublisher:
    """``Publisher`` over the devhost broker. Sends share the process's :class:`BrokerWriter`
    (pass it as ``writer``) or, without one, a writer of their own, stopped by :meth:`close`."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_message_bytes: int = SERVICE_BUS_MAX_BYTES,
        writer: BrokerWriter | None = None,
    ) -> None:
        """``max_message_bytes`` is the Service Bus tier's limit the sends are checked against."""
        if max_message_bytes <= MESSAGE_OVERHEAD_BYTES:
            # No message fits once framing is counted: refused as the Azure adapter refuses it.
            raise ConfigError("max_message_bytes", f"{max_message_bytes} is too small")
        self._broker = broker
        self._max = max_message_bytes
        self._writer = writer or BrokerWriter(broker)
        self._owns_writer = writer is None

    async def send(self, message: OutboundMessage) -> None:
        """Send durably: returns once the message (or its duplicate-drop) is committed.

        Raises ``OversizeMessage`` before anything is sent when the message, properties and
        framing included, would be too large for Service Bus (the Azure adapter's check).
        """
        check_message_size(message, self._max)
        scheduled = message.scheduled_enqueue_time
        spec = SendSpec(
            body=message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id or None,
            subject=message.subject or None,
            content_type=message.content_type,
            application_properties=dict(message.application_properties),
            scheduled_enqueue_time=scheduled.timestamp() if scheduled else None,
        )
        if message.to_topic:
            await self._writer.call(self._broker.send_to_topic, message.queue, [spec])
            return
        await self._writer.send(message.queue, spec)

    async def close(self) -> None:
        if self._owns_writer:
            await self._writer.close()
