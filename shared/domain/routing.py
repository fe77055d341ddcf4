"""Routing between stages: the one place that says where a conversation goes next."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from shared.domain.messages import Stage
from shared.domain.results import (
    CriticResult,
    EscalationResult,
    IntentLabel,
    IntentResult,
    ResponseResult,
    Verdict,
)

LOW_CONFIDENCE = 0.35
"""Below this the intent is too uncertain to answer automatically."""

ALWAYS_HUMAN = frozenset({IntentLabel.FRAUD_REPORT})


class Outcome(StrEnum):
    ANSWERED = "answered"
    ESCALATED = "escalated"
    REJECTED = "rejected"
    FAILED = "failed"
    RESOLVED_BY_HUMAN = "resolved_by_human"
    """An escalation a person answered (``shared.domain.workitem``)."""


@dataclass(frozen=True)
class Next:
    """Send the conversation to ``stage`` at ``revision``; ``reason`` is kept for escalations."""

    stage: Stage
    revision: int
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"stage": self.stage.value, "revision": self.revision, "reason": self.reason}


@dataclass(frozen=True)
class Finish:
    outcome: Outcome
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"outcome": self.outcome.value, "reason": self.reason}


Step = Next | Finish


def next_step(stage: Stage, result: BaseModel, *, revision: int, max_revisions: int) -> Step:
    """Where a conversation goes after ``stage`` produced ``result`` at ``revision``.

    The critic's revise loop is bounded: a revise verdict at ``max_revisions`` escalates.
    """
    match stage, result:
        case Stage.INTENT, IntentResult() as intent:
            if intent.needs_human:
                return Next(Stage.ESCALATION, revision, "the customer needs a person")
            if intent.label in ALWAYS_HUMAN:
                return Next(
                    Stage.ESCALATION, revision, f"{intent.label.value} always goes to a person"
                )
            if intent.confidence < LOW_CONFIDENCE:
                return Next(Stage.ESCALATION, revision, "intent too uncertain to answer")
            return Next(Stage.RESPONSE, 0)
        case Stage.RESPONSE, ResponseResult():
            return Next(Stage.CRITIC, revision)
        case Stage.CRITIC, CriticResult() as review:
            if review.verdict is Verdict.APPROVE:
                return Finish(Outcome.ANSWERED)
            if review.verdict is Verdict.ESCALATE:
                return Next(Stage.ESCALATION, revision, "the reviewer asked for a person")
            if revision < max_revisions:
                return Next(Stage.RESPONSE, revision + 1)
            return Next(
                Stage.ESCALATION, revision, f"still not approved after {revision} revisions"
            )
        case Stage.ESCALATION, EscalationResult():
            return Finish(Outcome.ESCALATED)
    raise TypeError(f"no route from {stage.value} with {type(result).__name__}")


def after_model_refusal(stage: Stage, revision: int, reason: str) -> Step:
    """A content filter or broken model output is final for the stage: a person takes over."""
    if stage is Stage.ESCALATION:
        return Finish(Outcome.ESCALATED, reason)
    return Next(Stage.ESCALATION, revision, reason)
