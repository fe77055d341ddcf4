"""A conversation's work item as methods of the aggregate (``shared.domain.workitem`` has the
state machine).

:class:`HandoverOps` is a base of :class:`~shared.domain.conversation.Conversation`: opening
the work item when the agents hand over, and a person's claim, release and resolve, each
returning a new aggregate with an audit entry (who, when, what).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from shared.domain.messages import Stage
from shared.domain.records import OutcomeRecord, RequestRecord, StageRecord
from shared.domain.routing import Outcome
from shared.domain.turns import TurnSummary
from shared.domain.workitem import AuditEntry, HistoryLine, WorkItem, WorkItemConflict

if TYPE_CHECKING:
    from shared.domain.outbox import OutboxEntry


class HandoverOps:
    """The work-item operations of the conversation aggregate."""

    if TYPE_CHECKING:  # the aggregate's fields and methods these read (Conversation has them)
        conversation_id: str
        customer_id: str
        channel: str | None
        created_at: datetime
        updated_at: datetime
        request: RequestRecord | None
        outbox: list[OutboxEntry]
        work_item: WorkItem | None
        audit: list[AuditEntry]
        turn: int
        turns: list[TurnSummary]

        def records_in_order(self) -> list[StageRecord]: ...

        def _with_outcome_message(
            self,
            outcome: OutcomeRecord,
            *,
            reply: str | None = None,
            author: str = "agents",
            escalation: dict[str, Any] | None = None,
        ) -> Self: ...

        def model_copy(
            self, *, update: Mapping[str, Any] | None = None, deep: bool = False
        ) -> Self: ...

    def claim(self, agent: str, *, now: datetime) -> Self | None:
        """The work item held by ``agent``; None when it already is. Raises
        ``WorkItemConflict`` when another agent holds it or it is resolved."""
        item = self._open_item()
        claimed = item.claimed(agent, now=now)
        if claimed is None:
            return None
        return self._with_item(claimed, now, agent, "claimed")

    def release(self, agent: str, *, now: datetime) -> Self:
        """The work item open again; only its holder releases it."""
        item = self._open_item()
        return self._with_item(item.released(agent), now, agent, "released")

    def resolve(self, agent: str, reply: str, *, now: datetime) -> Self | None:
        """Resolved by ``agent``: the reply is the outcome (``resolved_by_human``) and goes
        to the outbox like any reply. None when it is already resolved with this reply."""
        item = self._open_item()
        resolved = item.resolved(agent, reply, now=now)
        if resolved is None:
            return None
        outcome = OutcomeRecord(
            status=Outcome.RESOLVED_BY_HUMAN,
            at=now,
            reply=reply,
            team=item.team,
            priority=item.priority,
            reason=item.reason,
        )
        changed = self._with_item(resolved, now, agent, "resolved", detail=reply)
        return changed.model_copy(
            update={"status": Outcome.RESOLVED_BY_HUMAN.value, "outcome": outcome}
        )._with_outcome_message(outcome, reply=reply, author=f"human:{agent}")

    def _open_item(self) -> WorkItem:
        if self.work_item is None:
            raise WorkItemConflict(f"conversation {self.conversation_id} has no work item")
        return self.work_item

    def _with_item(
        self, item: WorkItem, now: datetime, who: str, action: str, *, detail: str = ""
    ) -> Self:
        entry = AuditEntry(at=now, who=who, action=action, detail=detail)
        return self.model_copy(
            update={"work_item": item, "audit": [*self.audit, entry], "updated_at": now}
        )

    def _with_work_item(self, now: datetime) -> Self:
        """The work item of the escalation just decided: the handover's, with the history."""
        handover = next(
            (e.message.work_item for e in reversed(self.outbox) if e.message.work_item), None
        )
        if handover is None or (self.work_item is not None and self.work_item.id == handover.id):
            return self
        item = WorkItem(
            id=handover.id,
            conversation_id=self.conversation_id,
            customer_id=self.customer_id,
            channel=self.channel,
            turn=self.turn,
            team=handover.team,
            priority=handover.priority,
            reason=handover.reason,
            summary=handover.summary,
            history=self.history(),
            created_at=now,
            due_at=handover.due_at,
        )
        detail = f"{item.team} ({item.priority}): {item.reason}"
        return self._with_item(item, now, "agents", "escalated", detail=detail)

    def history(self) -> list[HistoryLine]:
        """The conversation as the team reads it: earlier turns (the customer's message and
        the reply), then this turn's message and the agents' drafts."""
        lines: list[HistoryLine] = []
        for earlier in sorted(self.turns, key=lambda t: t.turn):
            lines.append(
                HistoryLine(
                    turn=earlier.turn, role="customer", text=earlier.text, at=earlier.received_at
                )
            )
            if earlier.reply:
                human = earlier.status == Outcome.RESOLVED_BY_HUMAN.value
                lines.append(
                    HistoryLine(
                        turn=earlier.turn,
                        role="human" if human else "agent",
                        text=earlier.reply,
                        at=earlier.ended_at or earlier.received_at,
                    )
                )
        if self.request is not None:
            lines.append(
                HistoryLine(
                    turn=self.turn,
                    role="customer",
                    text=self.request.text,
                    at=self.updated_at if self.turn else self.created_at,
                )
            )
        for record in self.records_in_order():
            if record.turn != self.turn or record.stage is not Stage.RESPONSE:
                continue
            if record.result and record.result.get("reply"):
                text = str(record.result["reply"])
                lines.append(
                    HistoryLine(turn=self.turn, role="agent", text=text, at=record.completed_at)
                )
        return lines
