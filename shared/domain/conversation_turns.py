"""A conversation's turns as methods of the aggregate (``shared.domain.turns`` has the rules).

:class:`TurnOps` is a base of :class:`~shared.domain.conversation.Conversation`; it holds the
operations on turns - taking a follow-up in, starting the next turn, sending a follow-up to
the person on the case - each returning a new aggregate like every change of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from shared.domain.messages import CustomerRequest, Envelope, Priority, Stage, message_id_for
from shared.domain.records import RECEIVED, OutcomeRecord, RequestRecord
from shared.domain.routing import Outcome
from shared.domain.turns import (
    MAX_TURNS,
    TO_PERSON,
    EarlierTurn,
    FollowUp,
    QueuedTurn,
    TurnSummary,
)
from shared.domain.workitem import AuditEntry, HistoryLine, WorkItem, WorkItemStatus

if TYPE_CHECKING:
    from shared.domain.outbox import OutboxEntry


class TurnOps:
    """The turn operations of the conversation aggregate."""

    if TYPE_CHECKING:  # the aggregate's fields these methods read (Conversation declares them)
        conversation_id: str
        customer_id: str
        status: str
        priority: Priority | None
        batch_id: str | None
        traceparent: str | None
        created_at: datetime
        updated_at: datetime
        request: RequestRecord | None
        outcome: OutcomeRecord | None
        outbox: list[OutboxEntry]
        work_item: WorkItem | None
        audit: list[AuditEntry]
        turn: int
        turn_key: str | None
        turns: list[TurnSummary]
        queued: list[QueuedTurn]

        @property
        def is_final(self) -> bool: ...

        def model_copy(
            self, *, update: Mapping[str, Any] | None = None, deep: bool = False
        ) -> Self: ...

    def first_message(self, *, now: datetime, traceparent: str | None) -> Envelope:
        """The intent message that starts the current turn (deterministic id per turn)."""
        return Envelope(
            message_id=message_id_for(self.conversation_id, Stage.INTENT, 0, turn=self.turn),
            conversation_id=self.conversation_id,
            customer_id=self.customer_id,
            stage=Stage.INTENT,
            revision=0,
            turn=self.turn,
            priority=self.priority or Priority.INTERACTIVE,
            batch_id=self.batch_id,
            traceparent=traceparent or self.traceparent,
            created_at=self.created_at,
            sent_at=now,
        )

    def earlier_turns(self) -> list[EarlierTurn]:
        """The turns before the current one, as the agents see them."""
        return [
            EarlierTurn(t.turn, t.text, t.reply)
            for t in sorted(self.turns, key=lambda t: t.turn)
            if t.turn < self.turn or t.status != TO_PERSON
        ]

    def turn_of(self, key: str) -> int | None:
        """The turn a follow-up with ``key`` became, if it was taken in before."""
        if self.turn_key == key:
            return self.turn
        for earlier in self.turns:
            if earlier.key == key:
                return earlier.turn
        for waiting in self.queued:
            if waiting.key == key:
                return waiting.turn
        return None

    @property
    def next_turn(self) -> int:
        return 1 + max([self.turn, *(t.turn for t in self.turns), *(q.turn for q in self.queued)])

    @property
    def with_a_person(self) -> bool:
        """Escalated, and the work item is not resolved yet."""
        item = self.work_item
        return (
            self.status == Outcome.ESCALATED.value
            and item is not None
            and item.status is not WorkItemStatus.RESOLVED
        )

    def follow_up(
        self, request: CustomerRequest, key: str, *, now: datetime
    ) -> tuple[Self | None, FollowUp, int]:
        """Take a follow-up in: (the changed conversation or None, what became of it, its
        turn)."""
        known = self.turn_of(key)
        if known is not None:
            return None, FollowUp.ALREADY, known
        if self.next_turn >= MAX_TURNS:
            return None, FollowUp.FULL, self.next_turn
        queued = QueuedTurn(
            turn=self.next_turn,
            key=key,
            text=request.text,
            idempotency_key=request.idempotency_key,
            metadata=request.metadata or {},
            received_at=now,
        )
        if self.with_a_person:
            return self._to_person(queued, now), FollowUp.TO_WORK_ITEM, queued.turn
        if self.is_final:
            return self._begin(queued, now), FollowUp.STARTED, queued.turn
        changed = self.model_copy(update={"queued": [*self.queued, queued], "updated_at": now})
        return changed, FollowUp.QUEUED, queued.turn

    def settle_queued(self, *, now: datetime) -> Self | None:
        """Once the current turn has its outcome: the first queued follow-up starts (or, with
        a person on the case, every queued one goes to the work item). None: nothing to do."""
        if not self.queued or not self.is_final:
            return None
        rest = self.model_copy(update={"queued": self.queued[1:]})
        if self.with_a_person:
            changed = rest._to_person(self.queued[0], now)
            return changed.settle_queued(now=now) or changed
        return rest._begin(self.queued[0], now)

    def _to_person(self, queued: QueuedTurn, now: datetime) -> Self:
        assert self.work_item is not None
        line = HistoryLine(turn=queued.turn, role="customer", text=queued.text, at=now)
        summary = TurnSummary(
            turn=queued.turn,
            key=queued.key,
            text=queued.text,
            status=TO_PERSON,
            received_at=queued.received_at,
        )
        entry = AuditEntry(
            at=now, who=f"customer:{self.customer_id}", action="wrote", detail=queued.text[:200]
        )
        return self.model_copy(
            update={
                "work_item": self.work_item.with_line(line),
                "turns": [*self.turns, summary],
                "audit": [*self.audit, entry],
                "updated_at": now,
            }
        )

    def _begin(self, queued: QueuedTurn, now: datetime) -> Self:
        """The next turn: the current one is archived with its outcome."""
        assert self.request is not None
        outcome = self.outcome
        reply = None
        if outcome is not None:
            reply = outcome.reply
            if outcome.status is Outcome.ESCALATED:
                handover = next(
                    (e.message for e in reversed(self.outbox) if e.message.turn == self.turn),
                    None,
                )
                reply = handover.text if handover else None
        archived = TurnSummary(
            turn=self.turn,
            key=self.turn_key,
            text=self.request.text,
            status=self.status,
            reply=reply,
            received_at=self.created_at if self.turn == 0 else self.updated_at,
            ended_at=outcome.at if outcome else None,
        )
        return self.model_copy(
            update={
                "turn": queued.turn,
                "turn_key": queued.key,
                "request": RequestRecord(
                    text=queued.text,
                    idempotency_key=queued.idempotency_key,
                    metadata=queued.metadata,
                ),
                "status": RECEIVED,
                "outcome": None,
                "turns": [*self.turns, archived],
                "updated_at": now,
            }
        )
