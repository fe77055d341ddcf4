"""The conversation's parts: its stage records, request, outcome and, for a refused input,
where it came from - the value types :class:`~shared.domain.conversation.Conversation` is made
of, with the JSON form the store keeps (camelCase; pinned by tests/unit/test_conversation.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from shared.domain.messages import Stage
from shared.domain.routing import Finish, Next, Outcome, Step

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
    model_seconds: float = 0.0
    """Seconds spent waiting for the model's answers; 0 in records written before it was kept."""
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
