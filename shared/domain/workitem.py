"""Escalation work items: what a person on a team picks up when the agents hand over.

A work item belongs to one escalated turn of a conversation and lives in the conversation's
document, so it is created in the same conditional write as the escalation (and its outbox
entry), and every change to it - claim, release, resolve, a customer's follow-up - is one
conditional write of the conversation that also appends to its audit trail.

The state machine::

    open ──claim(a)──▶ claimed by a ──resolve(a, reply)──▶ resolved
      ▲                    │
      └─────release(a)─────┘

- claiming an item someone else holds, or one already resolved, is a :class:`WorkItemConflict`
  (HTTP 409); claiming it again as its holder changes nothing;
- only the holder releases or resolves; resolving again with the same reply changes nothing,
  with another reply it is a conflict.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from shared.domain.results import EscalationPriority
from shared.errors import SwitchboardError

Timestamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]

PRIORITY_RANK: dict[str, int] = {
    EscalationPriority.URGENT.value: 0,
    EscalationPriority.HIGH.value: 1,
    EscalationPriority.NORMAL.value: 2,
    EscalationPriority.LOW.value: 3,
}
"""Work queues are ordered by priority (urgent first), then by age (oldest first)."""

MAX_AGENT_CHARS = 128


class _Doc(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class WorkItemConflict(SwitchboardError):
    """The change does not apply to the work item as it now is (HTTP 409)."""


class WorkItemStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


class HistoryLine(_Doc):
    """One message of the conversation as the team sees it."""

    turn: int = 0
    role: Literal["customer", "agent", "human"]
    text: str
    at: Timestamp


class AuditEntry(_Doc):
    """Who did what to the conversation, and when."""

    at: Timestamp
    who: str
    action: str
    detail: str = ""


class WorkItem(_Doc):
    """One escalated turn, for a person on ``team``."""

    id: str
    conversation_id: str
    customer_id: str
    channel: str | None = None
    turn: int = 0
    team: str
    priority: str
    reason: str
    summary: str
    history: list[HistoryLine] = Field(default_factory=list)
    status: WorkItemStatus = WorkItemStatus.OPEN
    created_at: Timestamp
    due_at: Timestamp
    claimed_by: str | None = None
    claimed_at: Timestamp | None = None
    resolved_by: str | None = None
    resolved_at: Timestamp | None = None
    reply: str | None = None

    @property
    def rank(self) -> tuple[int, datetime]:
        """The sort key of a work queue: priority, then age."""
        return (PRIORITY_RANK.get(self.priority, len(PRIORITY_RANK)), self.created_at)

    def claimed(self, agent: str, *, now: datetime) -> WorkItem | None:
        """Held by ``agent``; None when it already is."""
        _check_agent(agent)
        if self.status is WorkItemStatus.RESOLVED:
            raise WorkItemConflict(f"work item {self.id} is already resolved")
        if self.status is WorkItemStatus.CLAIMED:
            if self.claimed_by == agent:
                return None
            raise WorkItemConflict(f"work item {self.id} is claimed by {self.claimed_by}")
        return self.model_copy(
            update={"status": WorkItemStatus.CLAIMED, "claimed_by": agent, "claimed_at": now}
        )

    def released(self, agent: str) -> WorkItem:
        """Open again, for anyone on the team."""
        self._check_holder(agent, "release")
        return self.model_copy(
            update={"status": WorkItemStatus.OPEN, "claimed_by": None, "claimed_at": None}
        )

    def resolved(self, agent: str, reply: str, *, now: datetime) -> WorkItem | None:
        """Resolved by ``agent`` with ``reply``; None when it already is, with that reply."""
        if self.status is WorkItemStatus.RESOLVED:
            if self.resolved_by == agent and self.reply == reply:
                return None
            raise WorkItemConflict(f"work item {self.id} is already resolved")
        self._check_holder(agent, "resolve")
        return self.model_copy(
            update={
                "status": WorkItemStatus.RESOLVED,
                "resolved_by": agent,
                "resolved_at": now,
                "reply": reply,
            }
        )

    def with_line(self, line: HistoryLine) -> WorkItem:
        """The item with a customer's follow-up added to its history."""
        return self.model_copy(update={"history": [*self.history, line]})

    def _check_holder(self, agent: str, what: str) -> None:
        _check_agent(agent)
        if self.status is WorkItemStatus.RESOLVED:
            raise WorkItemConflict(f"work item {self.id} is already resolved")
        if self.status is not WorkItemStatus.CLAIMED:
            raise WorkItemConflict(f"work item {self.id} is not claimed; claim it to {what} it")
        if self.claimed_by != agent:
            raise WorkItemConflict(f"work item {self.id} is claimed by {self.claimed_by}")


def _check_agent(agent: str) -> None:
    if not agent or len(agent) > MAX_AGENT_CHARS:
        raise ValueError(f"an agent is named by 1-{MAX_AGENT_CHARS} characters")


def conversation_of(work_item_id: str) -> str | None:
    """The conversation a work item id belongs to (``w-<key>-t<turn>`` → ``c-<key>``)."""
    if not work_item_id.startswith("w-") or "-t" not in work_item_id:
        return None
    key, _, turn = work_item_id[2:].rpartition("-t")
    return f"c-{key}" if key and turn.isdigit() else None
