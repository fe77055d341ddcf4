"""The conversation: one typed aggregate per conversation, its stage records and its outcome.

A conversation is created when a request is received (or a rejection when an input is not a
request), gains exactly one :class:`StageRecord` per (stage, revision) - a record once written
is never rewritten, which is what makes a redelivered message find its work done - and ends with
one :class:`OutcomeRecord`. Every change is a method that returns a new aggregate; the pipeline
writes it conditionally.

The JSON form (camelCase, ``v`` = :data:`SCHEMA_VERSION`) is made and read only at the store
boundary, by :meth:`Conversation.to_doc` and :meth:`Conversation.from_doc`; nothing outside
``shared/domain`` reads a conversation document by key. ``tests/unit/test_conversation.py``
pins the JSON with snapshots.

The value types it is made of are in ``shared.domain.records``; the operations on its turns
and on its work item are in ``shared.domain.conversation_turns`` and
``shared.domain.conversation_handover`` (bases of :class:`Conversation`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from shared.domain.agent_input import AgentInput, Draft
from shared.domain.conversation_handover import HandoverOps
from shared.domain.conversation_turns import TurnOps
from shared.domain.messages import CustomerRequest, Envelope, Priority, Stage
from shared.domain.outbox import OutboxEntry, outcome_entry
from shared.domain.records import (
    FINAL_STATUSES,
    IN_PROGRESS,
    PENDING,
    RECEIVED,
    SCHEMA_VERSION,
    BodySummary,
    NextStep,
    OutcomeRecord,
    RejectionSource,
    RequestRecord,
    StageError,
    StageRecord,
    StageUsage,
    Timestamp,
    Tokens,
    _Doc,
    stage_key,
)
from shared.domain.results import CriticResult, IntentResult
from shared.domain.routing import Finish, Outcome, Step
from shared.domain.turns import (
    QueuedTurn,
    TurnSummary,
    bounded_history,
)
from shared.domain.workitem import (
    AuditEntry,
    WorkItem,
)

__all__ = [
    "FINAL_STATUSES",
    "IN_PROGRESS",
    "PENDING",
    "RECEIVED",
    "SCHEMA_VERSION",
    "BodySummary",
    "Conversation",
    "NextStep",
    "OutcomeRecord",
    "RejectionSource",
    "RequestRecord",
    "StageError",
    "StageRecord",
    "StageUsage",
    "Tokens",
    "stage_key",
]
"""The aggregate, and the parts it is made of (``shared.domain.records``) under their old
address."""


class Conversation(TurnOps, HandoverOps, _Doc):
    """The aggregate. Build it with :meth:`received` or :meth:`rejected`; change it with
    :meth:`with_stage` and :meth:`failed`; store it with :meth:`to_doc`."""

    v: int = SCHEMA_VERSION
    id: str
    conversation_id: str
    customer_id: str
    status: str
    channel: str | None = None
    priority: Priority | None = None
    request: RequestRecord | None = None
    traceparent: str | None = None
    trace_id: str | None = None
    batch_id: str | None = None
    created_at: Timestamp
    updated_at: Timestamp
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    tokens: dict[str, Tokens] = Field(default_factory=lambda: {"total": Tokens()})
    outcome: OutcomeRecord | None = None
    reason_code: str | None = None
    source: RejectionSource | None = None
    body: BodySummary | None = None
    outbox: list[OutboxEntry] = Field(default_factory=list)
    """The outcome messages of this conversation, pending until sent (``shared.domain.outbox``)."""
    work_item: WorkItem | None = None
    """What a person works on once the agents handed over (``shared.domain.workitem``)."""
    audit: list[AuditEntry] = Field(default_factory=list)
    """Every change people (and the hand-over) made: who, when, what."""
    turn: int = 0
    """The current turn (``shared.domain.turns``); ``request`` and ``outcome`` are its own."""
    turn_key: str | None = None
    turns: list[TurnSummary] = Field(default_factory=list)
    """Earlier turns, and follow-ups that went to a person."""
    queued: list[QueuedTurn] = Field(default_factory=list)

    # -- construction

    @classmethod
    def received(
        cls,
        conversation_id: str,
        request: CustomerRequest,
        *,
        priority: Priority,
        batch_id: str | None,
        traceparent: str,
        trace_id: str,
        now: datetime,
    ) -> Conversation:
        """The conversation recorded when a request is received."""
        return cls(
            id=conversation_id,
            conversation_id=conversation_id,
            customer_id=request.customer_id,
            channel=request.channel.value,
            priority=priority,
            status=RECEIVED,
            request=RequestRecord(
                text=request.text,
                idempotency_key=request.idempotency_key,
                metadata=request.metadata or {},
            ),
            traceparent=traceparent,
            trace_id=trace_id,
            batch_id=batch_id,
            created_at=now,
            updated_at=now,
        )

    @classmethod
    def rejected(
        cls,
        record_id: str,
        *,
        code: str,
        reason: str,
        customer_id: str | None,
        source: RejectionSource,
        body: BodySummary,
        batch_id: str | None = None,
        now: datetime,
    ) -> Conversation:
        """The record of an input that could not become a conversation.

        ``code`` is the request contract's reason code (queryable as ``reasonCode``),
        ``reason`` names the field and the limit, ``source`` says where the input came from and
        ``body`` identifies it without holding it.
        """
        return cls(
            id=record_id,
            conversation_id=record_id,
            customer_id=customer_id or "unknown",
            status=Outcome.REJECTED.value,
            reason_code=code,
            source=source,
            body=body,
            batch_id=batch_id,
            outcome=OutcomeRecord(status=Outcome.REJECTED, code=code, reason=reason),
            created_at=now,
            updated_at=now,
        )

    @classmethod
    def pending(cls, conversation_id: str, *, now: datetime) -> Conversation:
        """A stand-in for a conversation a caller expects but the store does not hold yet."""
        return cls(
            id=conversation_id,
            conversation_id=conversation_id,
            customer_id="?",
            status=PENDING,
            created_at=now,
            updated_at=now,
        )

    # -- the store boundary

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Conversation:
        """The aggregate from a stored document; the store's own ``_``-fields are left out."""
        return cls.model_validate({k: v for k, v in doc.items() if not k.startswith("_")})

    def to_doc(self) -> dict[str, Any]:
        """The stored JSON. Unset optional fields are left out; ``outcome`` is null until the
        conversation ends."""
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc.setdefault("outcome", None)
        doc["stages"] = {key: record.to_view() for key, record in self.stages.items()}
        for empty in ("outbox", "audit", "turn", "turns", "queued"):
            if not doc[empty]:
                del doc[empty]  # a one-turn conversation with no outcome yet stores none
        return doc

    def view(self) -> dict[str, Any]:
        """What the HTTP API shows: the document, with its stage records in the order written."""
        doc = self.to_doc()
        doc["stages"] = [r.to_view() for r in self.records_in_order()]
        return doc

    # -- reading

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def record(self, stage: Stage, revision: int, turn: int | None = None) -> StageRecord | None:
        """The stage record of ``turn`` (the current one when None)."""
        return self.stages.get(stage_key(stage, revision, self.turn if turn is None else turn))

    def records_in_order(self) -> list[StageRecord]:
        return sorted(self.stages.values(), key=lambda r: r.seq)

    @property
    def intent_label(self) -> str | None:
        """The intent the first stage found, if it has run."""
        record = self.record(Stage.INTENT, 0)
        label = record.result.get("label") if record and record.result else None
        return str(label) if label is not None else None

    def pending_outbox(self) -> list[OutboxEntry]:
        """The outcome messages decided but not yet known to be sent."""
        return [entry for entry in self.outbox if entry.pending]

    @property
    def revisions(self) -> int:
        return max((r.revision for r in self.stages.values()), default=0)

    @property
    def total(self) -> Tokens:
        return self.tokens.get("total", Tokens())

    def seconds_to_outcome(self) -> float | None:
        """From received to the outcome, for a conversation that has one with a time."""
        if self.outcome is None or self.outcome.at is None:
            return None
        return (self.outcome.at - self.created_at).total_seconds()

    def summary(self, width: int = 70) -> str:
        """What became of the conversation in a few words: the reply, the team, the reason."""
        outcome = self.outcome
        if outcome is None:
            text = ""
        elif outcome.status is Outcome.ESCALATED:
            text = f"{outcome.team or '?'} ({outcome.priority or '?'})"
        elif outcome.status is Outcome.ANSWERED:
            text = outcome.reply or ""
        else:
            text = ": ".join(t for t in (outcome.reason, outcome.description) if t)
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    def agent_input(self, env: Envelope, *, max_revisions: int) -> AgentInput:
        """What the agent for ``env.stage`` needs, read from the conversation."""
        assert self.request is not None, "a rejection has no agent input"
        intent_record = self.record(Stage.INTENT, 0, env.turn)
        intent = (
            IntentResult.model_validate(intent_record.result)
            if intent_record and intent_record.result
            else None
        )
        earlier, omitted = bounded_history(self.earlier_turns())
        drafts: list[Draft] = []
        upto = env.revision if env.stage is Stage.RESPONSE else env.revision + 1
        for revision in range(upto):
            drafted = self.record(Stage.RESPONSE, revision, env.turn)
            if not drafted or not drafted.result:
                continue
            reviewed = self.record(Stage.CRITIC, revision, env.turn)
            review = (
                CriticResult.model_validate(reviewed.result)
                if reviewed and reviewed.result
                else None
            )
            drafts.append(Draft(revision=revision, reply=drafted.result["reply"], review=review))
        return AgentInput(
            conversation_id=self.conversation_id,
            customer_id=self.customer_id,
            channel=self.channel or "chat",
            text=self.request.text,
            revision=env.revision,
            max_revisions=max_revisions,
            intent=intent,
            drafts=tuple(drafts),
            escalation_reason=str(env.payload.get("reason", "")),
            earlier=earlier,
            omitted_turns=omitted,
        )

    # -- changes (each returns a new aggregate)

    def with_stage(self, record: StageRecord, step: Step, *, now: datetime) -> Conversation:
        """The conversation with ``record`` added, its tokens counted and, when ``step``
        finishes it, the outcome."""
        record = record.model_copy(update={"seq": len(self.stages)})
        tokens = dict(self.tokens)
        for bucket in (record.stage.value, "total"):
            tokens[bucket] = tokens.get(bucket, Tokens()).plus(record.usage)
        update: dict[str, Any] = {
            "stages": {**self.stages, record.key: record},
            "tokens": tokens,
            "updated_at": now,
            "status": IN_PROGRESS,
        }
        staged = self.model_copy(update=update)
        if not isinstance(step, Finish):
            return staged
        outcome = staged._outcome(record, step, now)
        escalation = None
        if step.outcome is Outcome.ESCALATED:
            escalation = record.result or {"reason": step.reason, "summary": step.reason}
        ended = staged.model_copy(
            update={"status": step.outcome.value, "outcome": outcome}
        )._with_outcome_message(
            outcome,
            reply=outcome.reply if step.outcome is Outcome.ANSWERED else None,
            escalation=escalation,
        )
        return ended._with_work_item(now) if escalation is not None else ended

    def failed(self, *, reason: str, description: str, now: datetime) -> Conversation:
        """The conversation ended ``failed`` with ``reason`` (a code) and its description."""
        outcome = OutcomeRecord(
            status=Outcome.FAILED, reason=reason, description=description, at=now
        )
        return self.model_copy(
            update={"status": Outcome.FAILED.value, "outcome": outcome, "updated_at": now}
        )._with_outcome_message(outcome)

    def outbox_sent(self, message_ids: set[str], *, now: datetime) -> Conversation | None:
        """The conversation with those pending outbox entries marked sent; None when none of
        them is pending any more."""
        if not any(e.pending and e.message_id in message_ids for e in self.outbox):
            return None
        outbox = [
            e.model_copy(update={"sent_at": now})
            if e.pending and e.message_id in message_ids
            else e
            for e in self.outbox
        ]
        return self.model_copy(update={"outbox": outbox})

    def _with_outcome_message(
        self,
        outcome: OutcomeRecord,
        *,
        reply: str | None = None,
        author: str = "agents",
        escalation: dict[str, Any] | None = None,
    ) -> Conversation:
        """Every final outcome puts exactly one message in the outbox, in the same write."""
        entry = outcome_entry(
            conversation_id=self.conversation_id,
            customer_id=self.customer_id,
            channel=self.channel,
            turn=self.turn,
            outcome=outcome.status.value,
            at=outcome.at or self.updated_at,
            reply=reply,
            author=author,
            escalation=escalation,
        )
        if any(e.message_id == entry.message_id for e in self.outbox):
            return self
        return self.model_copy(update={"outbox": [*self.outbox, entry]})

    def _outcome(self, record: StageRecord, step: Finish, now: datetime) -> OutcomeRecord:
        fields: dict[str, Any] = {"status": step.outcome, "at": now}
        if step.reason:
            fields["reason"] = step.reason
        if step.outcome is Outcome.ANSWERED:
            drafted = self.record(Stage.RESPONSE, record.revision, record.turn)
            fields["reply"] = drafted.result["reply"] if drafted and drafted.result else ""
            fields["revisions"] = record.revision
        elif step.outcome is Outcome.ESCALATED and record.result:
            result = record.result
            fields.update(
                team=result["team"],
                priority=result["priority"],
                reason=result["reason"],
                summary=result["summary"],
            )
        return OutcomeRecord(**fields)
