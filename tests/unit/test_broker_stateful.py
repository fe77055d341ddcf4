"""A hypothesis state machine drives the broker's queue API against a small in-memory model.

Every step compares the broker's answer with the model's; the invariants check that no message
is ever lost or settled twice and that delivery counts stay within MaxDeliveryCount.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from devhost.broker import MAX_DELIVERY_COUNT_EXCEEDED, Broker, LockLost
from tests.support.clock import FakeClock

QUEUE = "q"
LOCK_S = 30.0
MAX_DELIVERIES = 3
WINDOW_S = 100.0
ID_POOL = [f"id-{n}" for n in range(6)]  # small, so duplicates happen often


@dataclass
class ModelMessage:
    """What the model expects of one accepted send (identified by its unique body)."""

    body: bytes
    order: int
    status: str  # ready | scheduled | locked | completed | dead
    due: float = 0.0
    delivery_count: int = 0
    lock_token: str | None = None
    locked_until: float = 0.0
    reason: str | None = None


class QueueMachine(RuleBasedStateMachine):
    tokens = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="broker-sm-"))
        self.clock = FakeClock()
        self.broker = Broker(self.dir / "broker.db", clock=self.clock)
        self.broker.ensure_queue(
            QUEUE,
            lock_duration_s=LOCK_S,
            max_delivery_count=MAX_DELIVERIES,
            duplicate_window_s=WINDOW_S,
        )
        self.messages: dict[bytes, ModelMessage] = {}
        self.seen_until: dict[str, float] = {}
        self.sends = 0
        self.order = 0

    def teardown(self) -> None:
        self.broker.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers ----------------------------------------------------------------------

    def _next_order(self) -> int:
        self.order += 1
        return self.order

    def _visible(self) -> list[ModelMessage]:
        now = self.clock.now
        visible = [
            m
            for m in self.messages.values()
            if m.status == "ready"
            or (m.status == "scheduled" and m.due <= now)
            or (m.status == "locked" and m.locked_until <= now)
        ]
        return sorted(visible, key=lambda m: m.order)

    def _holder(self, token: str) -> ModelMessage | None:
        for message in self.messages.values():
            if (
                message.status == "locked"
                and message.lock_token == token
                and message.locked_until > self.clock.now
            ):
                return message
        return None

    # -- rules ------------------------------------------------------------------------------

    @rule(
        message_id=st.sampled_from(ID_POOL),
        delay=st.one_of(st.none(), st.sampled_from([-5.0, 0.0, 10.0, 45.0])),
    )
    def send(self, message_id: str, delay: float | None) -> None:
        self.sends += 1
        body = f"body-{self.sends}".encode()
        now = self.clock.now
        due = None if delay is None else now + delay
        accepted = self.broker.send(QUEUE, body, message_id=message_id, scheduled_enqueue_time=due)
        expected = self.seen_until.get(message_id, -1.0) <= now
        assert accepted is expected
        if accepted:
            self.seen_until[message_id] = now + WINDOW_S
            scheduled = due is not None and due > now
            self.messages[body] = ModelMessage(
                body=body,
                order=self._next_order(),
                status="scheduled" if scheduled else "ready",
                due=due if due is not None else now,
            )

    @rule(target=tokens, max_messages=st.integers(min_value=1, max_value=4))
    def receive(self, max_messages: int) -> object:
        got = self.broker.receive(QUEUE, max_messages=max_messages)
        expected: list[ModelMessage] = []
        for message in self._visible():
            if len(expected) == max_messages:
                break
            if message.delivery_count >= MAX_DELIVERIES:
                message.status, message.reason = "dead", MAX_DELIVERY_COUNT_EXCEEDED
                continue
            expected.append(message)
        assert [m.body for m in got] == [m.body for m in expected]
        for received, message in zip(got, expected, strict=True):
            message.delivery_count += 1
            message.status = "locked"
            message.lock_token = received.lock_token
            message.locked_until = self.clock.now + LOCK_S
            assert received.delivery_count == message.delivery_count
            assert received.locked_until == message.locked_until
        return multiple(*[m.lock_token for m in got])

    @rule(token=tokens)
    def complete(self, token: str) -> None:
        holder = self._holder(token)
        try:
            self.broker.complete(QUEUE, token)
        except LockLost:
            assert holder is None
        else:
            assert holder is not None
            holder.status, holder.lock_token = "completed", None

    @rule(token=tokens)
    def abandon(self, token: str) -> None:
        holder = self._holder(token)
        try:
            self.broker.abandon(QUEUE, token, reason="boom")
        except LockLost:
            assert holder is None
            return
        assert holder is not None
        holder.lock_token = None
        if holder.delivery_count >= MAX_DELIVERIES:
            holder.status, holder.reason = "dead", MAX_DELIVERY_COUNT_EXCEEDED
        else:
            holder.status = "ready"

    @rule(token=tokens)
    def dead_letter(self, token: str) -> None:
        holder = self._holder(token)
        try:
            self.broker.dead_letter(QUEUE, token, reason="Poison")
        except LockLost:
            assert holder is None
        else:
            assert holder is not None
            holder.status, holder.reason, holder.lock_token = "dead", "Poison", None

    @rule(token=tokens)
    def renew(self, token: str) -> None:
        holder = self._holder(token)
        try:
            locked_until = self.broker.renew_lock(QUEUE, token)
        except LockLost:
            assert holder is None
        else:
            assert holder is not None
            holder.locked_until = self.clock.now + LOCK_S
            assert locked_until == holder.locked_until

    @rule(seconds=st.sampled_from([0.5, 5.0, 29.0, 31.0, 60.0, 101.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: any(m.status == "dead" for m in self.messages.values()))
    @rule()
    def replay(self) -> None:
        dead = sorted(
            (m for m in self.messages.values() if m.status == "dead"), key=lambda m: m.order
        )
        assert self.broker.replay_deadletters(QUEUE) == len(dead)
        for message in dead:
            message.status, message.delivery_count, message.reason = "ready", 0, None
            message.order = self._next_order()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def no_message_is_lost_or_in_two_places(self) -> None:
        rows = (
            self.broker._conn()
            .execute(
                "SELECT body, state, delivery_count FROM sb_messages WHERE queue = ?", (QUEUE,)
            )
            .fetchall()
        )
        stored = [bytes(body) for body, _, _ in rows]
        assert len(stored) == len(set(stored)), "a message is stored twice"
        completed = {b for b, m in self.messages.items() if m.status == "completed"}
        assert set(stored).isdisjoint(completed), "a completed message is still stored"
        assert set(stored) | completed == set(self.messages), "an accepted message vanished"
        stats = self.broker.queue_stats()[QUEUE]
        assert stats.completed_total == len(completed)
        assert stats.sent_total == len(self.messages)
        now = self.clock.now
        expected_dead = {b for b, m in self.messages.items() if m.status == "dead"}
        expected_locked = sum(
            1 for m in self.messages.values() if m.status == "locked" and m.locked_until > now
        )
        expected_scheduled = sum(
            1 for m in self.messages.values() if m.status == "scheduled" and m.due > now
        )
        assert stats.deadlettered == len(expected_dead)
        assert stats.locked == expected_locked
        assert stats.scheduled == expected_scheduled
        assert stats.active == len(self._visible())
        dead = self.broker.deadletters(QUEUE, limit=1000)
        assert {d.body for d in dead} == expected_dead
        assert all(d.reason == self.messages[d.body].reason for d in dead)

    @invariant()
    def delivery_counts_never_exceed_the_maximum(self) -> None:
        (highest,) = (
            self.broker._conn()
            .execute("SELECT coalesce(max(delivery_count), 0) FROM sb_messages")
            .fetchone()
        )
        assert highest <= MAX_DELIVERIES


QueueMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_queue_behaves_like_its_model = QueueMachine.TestCase
