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
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from shared.domain.agent_input import AgentInput, Draft
from shared.domain.messages import CustomerRequest, Envelope, Priority, Stage, message_id_for
from shared.domain.outbox import OutboxEntry, outcome_entry
from shared.domain.results import CriticResult, IntentResult
from shared.domain.routing import Finish, Next, Outcome, Step
from shared.domain.turns import (
    MAX_TURNS,
    TO_PERSON,
    EarlierTurn,
    FollowUp,
    QueuedTurn,
    TurnSummary,
    bounded_history,
)
from shared.domain.workitem import (
    AuditEntry,
    HistoryLine,
    WorkItem,
    WorkItemConflict,
    WorkItemStatus,
)

SCHEMA_VERSION = 1
FINAL_STATUSES = frozenset(o.value for o in Outcome)
IN_PROGRESS = "in_progress"
RECEIVED = "received"
PENDING = "pending"
"""Not a stored status: what a reader shows for a conversation not written yet."""

Timestamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]
"""Stored as ``datetime.isoformat()`` (``+00:00``), as every document so far has been."""


class _Doc(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def stage_key(stage: Stage, revision: int, turn: int = 0) -> str:
    """``<stage>:<revision>`` for the first turn, ``t<turn>:<stage>:<revision>`` after it."""
    key = f"{stage.value}:{revision}"
    return key if turn == 0 else f"t{turn}:{key}"


class Tokens(_Doc):
    """Tokens, model calls and cost, for one stage or the whole conversation (``total``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def plus(self, usage: StageUsage) -> Tokens:
        return Tokens(
            prompt_tokens=self.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.completion_tokens + usage.completion_tokens,
            cost_usd=round(self.cost_usd + usage.cost_usd, 8),
            calls=self.calls + usage.calls,
        )


class StageUsage(_Doc):
    """What one stage's model calls cost (``shared.ports.Usage``, as stored)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    cached_calls: int = 0
    deployments: list[str] = Field(default_factory=list)


class StageError(_Doc):
    """Why a stage produced no result (a refusal), kept beside the routing it led to."""

    reason: str
    description: str


class NextStep(_Doc):
    """The routing decision a stage record holds: the next stage, or the outcome."""

    stage: Stage | None = None
    revision: int | None = None
    outcome: Outcome | None = None
    reason: str = ""

    @classmethod
    def of(cls, step: Step) -> NextStep:
        if isinstance(step, Next):
            return cls(stage=step.stage, revision=step.revision, reason=step.reason)
        return cls(outcome=step.outcome, reason=step.reason)

    def step(self) -> Step:
        if self.stage is not None:
            return Next(self.stage, int(self.revision or 0), self.reason)
        assert self.outcome is not None
        return Finish(self.outcome, self.reason)


class StageRecord(_Doc):
    """One stage's work at one revision: its result, cost and where the conversation goes."""

    key: str
    stage: Stage
    revision: int
    turn: int = 0
    message_id: str
    trace_id: str = ""
    result: dict[str, Any] | None = None
    usage: StageUsage = Field(default_factory=StageUsage)
    next: NextStep
    started_at: Timestamp
    completed_at: Timestamp
    error: StageError | None = None
    seq: int = 0

    def to_view(self) -> dict[str, Any]:
        """The record's JSON; ``result`` is null for a stage that produced none."""
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc.setdefault("result", None)
        if not self.turn:
            del doc["turn"]  # the first turn's records keep their original shape
        return doc

    def next_step(self) -> Step:
        """The routing decision this record holds."""
        return self.next.step()


class RequestRecord(_Doc):
    """The customer's request as received."""

    text: str
    idempotency_key: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class OutcomeRecord(_Doc):
    """How the conversation ended. Which fields are set depends on ``status``."""

    status: Outcome
    at: Timestamp | None = None
    reason: str | None = None
    description: str | None = None
    code: str | None = None
    reply: str | None = None
    revisions: int | None = None
    team: str | None = None
    priority: str | None = None
    summary: str | None = None


class RejectionSource(_Doc):
    """Where a refused input came from: an event, or a row of a batch document."""

    kind: Literal["event", "batch", "http"]
    event: str | None = None
    batch_id: str | None = None
    blob: str | None = None
    line: int | None = None

    def describe(self) -> str:
        if self.kind == "batch":
            return f"{self.blob} line {self.line}"
        if self.kind == "http":
            return f"HTTP request {self.event}"
        return f"event {self.event}"


class BodySummary(_Doc):
    """A refused input, identified without being kept: hash, size, a short redacted excerpt."""

    sha256: str
    bytes: int
    excerpt: str


class Conversation(_Doc):
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

    # -- the work item (an escalated turn, for a person)

    def claim(self, agent: str, *, now: datetime) -> Conversation | None:
        """The work item held by ``agent``; None when it already is. Raises
        ``WorkItemConflict`` when another agent holds it or it is resolved."""
        item = self._open_item()
        claimed = item.claimed(agent, now=now)
        if claimed is None:
            return None
        return self._with_item(claimed, now, agent, "claimed")

    def release(self, agent: str, *, now: datetime) -> Conversation:
        """The work item open again; only its holder releases it."""
        item = self._open_item()
        return self._with_item(item.released(agent), now, agent, "released")

    def resolve(self, agent: str, reply: str, *, now: datetime) -> Conversation | None:
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
    ) -> Conversation:
        entry = AuditEntry(at=now, who=who, action=action, detail=detail)
        return self.model_copy(
            update={"work_item": item, "audit": [*self.audit, entry], "updated_at": now}
        )

    def _with_work_item(self, now: datetime) -> Conversation:
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

    # -- turns (``shared.domain.turns``)

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
    ) -> tuple[Conversation | None, FollowUp, int]:
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

    def settle_queued(self, *, now: datetime) -> Conversation | None:
        """Once the current turn has its outcome: the first queued follow-up starts (or, with
        a person on the case, every queued one goes to the work item). None: nothing to do."""
        if not self.queued or not self.is_final:
            return None
        rest = self.model_copy(update={"queued": self.queued[1:]})
        if self.with_a_person:
            changed = rest._to_person(self.queued[0], now)
            return changed.settle_queued(now=now) or changed
        return rest._begin(self.queued[0], now)

    def _to_person(self, queued: QueuedTurn, now: datetime) -> Conversation:
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

    def _begin(self, queued: QueuedTurn, now: datetime) -> Conversation:
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
