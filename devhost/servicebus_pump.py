"""The Service Bus trigger's pump: peek-lock receives, up to ``maxConcurrentCalls`` invocations
in flight, lock renewal while the function runs, complete on return and abandon on an exception
(the Functions host's ``autoCompleteMessages`` contract)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from devhost.appmodel import (
    AppModel,
    FunctionSpec,
)
from devhost.bindings import service_bus_message
from devhost.broker import Broker, LockLost, ReceivedMessage
from devhost.broker.publisher import BrokerWriter
from devhost.pump import (
    DRAIN_TIMEOUT_S,
    IDLE_WAIT_S,
    RECEIVE_RETRY_S,
    HopLog,
    Pump,
    sleep_unless_stopped,
)
from shared.errors import TransientError
from shared.telemetry.redaction import redact

log = logging.getLogger("devhost.worker")


class ServiceBusPump(Pump):
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
                await sleep_unless_stopped(
                    stop, asyncio.create_task(asyncio.sleep(RECEIVE_RETRY_S))
                )
                continue
            if not messages:
                waiter = asyncio.create_task(self.broker.wait_for_messages(self.queue, IDLE_WAIT_S))
                await sleep_unless_stopped(stop, waiter)
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
