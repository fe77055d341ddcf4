"""The outbox: the one outbound message every final outcome of a turn emits.

An outcome message is decided in the same conditional write that decides the outcome: the
aggregate gains an :class:`OutboxEntry` (pending, ``sentAt`` unset) together with its outcome,
so a stage record and its message are stored together or not at all. The service then sends
the pending entries to the ``outcomes`` topic under their deterministic message ids and marks
them sent; a redelivered stage message finds an entry still pending and sends it again, and the
topic's duplicate detection drops a copy that had already left.

What each outcome emits (one message each):

- ``answered`` and ``resolved_by_human`` → kind ``reply``: the reply for the customer's channel;
- ``escalated`` → kind ``handover``: the customer-facing holding reply *and* the work item for
  the team (its id, team, priority, reason, summary and SLA due time), so the channel-delivery
  subscription and the team's subscription each see it once;
- ``failed`` and ``rejected`` (inside a stage) → kind ``closed``: for analytics only; it carries
  no ``channel`` property, so no channel-delivery subscription takes it.

Subscriptions select by the application properties ``channel`` and ``team`` (correlation
filters, ``infra/names.json`` serviceBus.topics.outcomes).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from shared.domain.results import EscalationPriority

OUTCOME_MESSAGE_VERSION = 1

Timestamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class OutcomeKind(StrEnum):
    REPLY = "reply"
    HANDOVER = "handover"
    CLOSED = "closed"


SLA_BY_PRIORITY: dict[EscalationPriority, timedelta] = {
    EscalationPriority.URGENT: timedelta(hours=1),
    EscalationPriority.HIGH: timedelta(hours=4),
    EscalationPriority.NORMAL: timedelta(hours=24),
    EscalationPriority.LOW: timedelta(hours=72),
}
"""How long a team has to answer an escalation, by its priority."""


def sla_due(priority: str | None, at: datetime) -> datetime:
    """When an escalation raised at ``at`` with ``priority`` is due (an unknown one: normal)."""
    try:
        level = EscalationPriority(priority or EscalationPriority.NORMAL)
    except ValueError:
        level = EscalationPriority.NORMAL
    return at + SLA_BY_PRIORITY[level]


def handover_notice(team: str | None, due: datetime) -> str:
    """The holding reply a customer gets when a person takes over."""
    who = f"our {team.replace('_', ' ')} team" if team else "our support team"
    return (
        "Thank you for your message. We have passed it to "
        f"{who}, and a member of the team will reply to you by "
        f"{due.strftime('%Y-%m-%d %H:%M')} UTC."
    )


def outcome_message_id(conversation_id: str, turn: int, outcome: str) -> str:
    """Deterministic: the topic's duplicate detection drops a second send of one outcome."""
    return f"{conversation_id}:t{turn}:{outcome}"


class WorkItemRef(_Model):
    """The work item a handover announces to the team."""

    id: str
    team: str
    priority: str
    reason: str
    summary: str
    due_at: Timestamp


OUTCOME_PROPERTY_NAMES = frozenset(
    {"kind", "outcome", "conversationId", "turn", "channel", "team", "priority"}
)
"""Every application property :meth:`OutcomeMessage.properties` may set: what a subscription's
correlation filter can match (``infra/topics.py`` checks names.json's filters against it)."""


class OutcomeMessage(_Model):
    """The body of one message on the ``outcomes`` topic."""

    v: int = OUTCOME_MESSAGE_VERSION
    message_id: str
    kind: OutcomeKind
    outcome: str
    conversation_id: str
    customer_id: str
    channel: str | None = None
    turn: int = 0
    text: str | None = Field(default=None, description="What the customer is sent, if anything.")
    author: str = Field(default="agents", description="'agents', or the person who replied.")
    work_item: WorkItemRef | None = None
    at: Timestamp

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def properties(self) -> dict[str, str | int]:
        """The application properties subscriptions filter on (correlation filters)."""
        props: dict[str, str | int] = {
            "kind": self.kind.value,
            "outcome": self.outcome,
            "conversationId": self.conversation_id,
            "turn": self.turn,
        }
        if self.channel and self.kind is not OutcomeKind.CLOSED:
            props["channel"] = self.channel
        if self.work_item is not None:
            props["team"] = self.work_item.team
            props["priority"] = self.work_item.priority
        return props


class OutboxEntry(_Model):
    """One outcome message waiting in (or sent from) the conversation's outbox."""

    message_id: str
    message: OutcomeMessage
    created_at: Timestamp
    sent_at: Timestamp | None = None

    @property
    def pending(self) -> bool:
        return self.sent_at is None


def outcome_entry(
    *,
    conversation_id: str,
    customer_id: str,
    channel: str | None,
    turn: int,
    outcome: str,
    at: datetime,
    reply: str | None = None,
    author: str = "agents",
    escalation: dict[str, Any] | None = None,
) -> OutboxEntry:
    """The outbox entry of one final outcome (see the module's table)."""
    message_id = outcome_message_id(conversation_id, turn, outcome)
    work_item: WorkItemRef | None = None
    if escalation is not None:
        kind = OutcomeKind.HANDOVER
        due = sla_due(escalation.get("priority"), at)
        team = str(escalation.get("team") or "customer_care")
        work_item = WorkItemRef(
            id=work_item_id(conversation_id, turn),
            team=team,
            priority=str(escalation.get("priority") or EscalationPriority.NORMAL.value),
            reason=str(escalation.get("reason") or ""),
            summary=str(escalation.get("summary") or ""),
            due_at=due,
        )
        text: str | None = handover_notice(team, due)
    elif reply is not None:
        kind, text = OutcomeKind.REPLY, reply
    else:
        kind, text = OutcomeKind.CLOSED, None
    message = OutcomeMessage(
        message_id=message_id,
        kind=kind,
        outcome=outcome,
        conversation_id=conversation_id,
        customer_id=customer_id,
        channel=channel,
        turn=turn,
        text=text,
        author=author,
        work_item=work_item,
        at=at,
    )
    return OutboxEntry(message_id=message_id, message=message, created_at=at)


def work_item_id(conversation_id: str, turn: int) -> str:
    """The escalation work item of a conversation's turn: one per escalated turn."""
    return f"w-{conversation_id.removeprefix('c-')}-t{turn}"
