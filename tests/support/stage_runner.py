"""Run the pipeline's stage triggers over a real devhost broker, in-process, as the Functions
host would: complete on return, abandon on an exception. Scheduled (rescheduled) messages are
released by moving the broker's clock."""

from __future__ import annotations

from typing import Any

from devhost import bindings
from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.outcomes import OutcomesTopic, decode, outcome_messages
from shared.config import Settings
from shared.domain.messages import Stage
from shared.errors import TransientError
from shared.ports import OutboundMessage
from tests.support.clock import FakeClock
from tests.support.drive import QUEUE_FUNCTIONS, app_functions


class Crash(Exception):
    """The worker dies here: nothing after this point runs for this delivery."""


class FaultyPublisher:
    """The broker publisher, with faults at outcome sends: ``before`` sends fail before the
    message leaves (a transient error), ``after`` sends leave and then the worker 'dies'."""

    def __init__(self, inner: BrokerPublisher, *, before: int = 0, after: int = 0) -> None:
        self.inner = inner
        self.before = before
        self.after = after
        self.topic_sends = 0

    async def send(self, message: OutboundMessage) -> None:
        if message.to_topic:
            self.topic_sends += 1
            if self.before:
                self.before -= 1
                raise TransientError("the topic is unreachable")
        await self.inner.send(message)
        if message.to_topic and self.after:
            self.after -= 1
            raise Crash("killed between the send and marking it sent")

    async def close(self) -> None:
        await self.inner.close()


async def run_stages(broker: Broker, clock: FakeClock, settings: Settings) -> dict[str, int]:
    """Deliver every stage message until the stage queues are empty."""
    functions = app_functions()
    counts = {"delivered": 0, "crashed": 0}
    for _ in range(200):
        busy = False
        for stage in Stage:
            queue = settings.queues.for_stage(stage)
            for received in broker.receive(queue, max_messages=10):
                busy = True
                counts["delivered"] += 1
                try:
                    function = functions[QUEUE_FUNCTIONS[stage.value]]
                    await function(bindings.service_bus_message(received))
                except Crash:
                    counts["crashed"] += 1
                    broker.abandon(queue, received.lock_token)
                else:
                    broker.complete(queue, received.lock_token)
        if not busy:
            if not any(broker.peek(settings.queues.for_stage(s)) for s in Stage):
                return counts
            clock.advance(3600)
    raise AssertionError("the pipeline did not settle")


def on_subscription(broker: Broker, subscription: str) -> list[dict[str, Any]]:
    """The outcome messages waiting on ``subscription``, decoded."""
    topic = OutcomesTopic.from_files()
    return [decode(m) for m in outcome_messages(broker, topic, subscription)]
