"""Where a conversation's time went, stage by stage: waiting to be picked up, in model calls,
and the rest of the stage's own work.

A stage becomes ready when the one before it (in the same turn) completed, or, for the first
stage of the first turn, when the request was received. ``waited_s`` is from ready to the stage
starting; ``model_s`` is the time its model calls took to answer (``StageUsage.model_seconds``);
``other_s`` is the rest of the agent's run: waits for quota, failed attempts and their backoff,
prompt building and parsing (the record is stamped before the stage's write and send).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from shared.domain.messages import Stage

if TYPE_CHECKING:
    from shared.domain.conversation import Conversation


@dataclass(frozen=True)
class StageTiming:
    stage: Stage
    turn: int
    waited_s: float | None
    """None for the first stage of a follow-up turn, whose arrival time the record lacks."""
    model_s: float
    other_s: float


def stage_timings(conversation: Conversation) -> list[StageTiming]:
    """One entry per stage record, in the order the stages ran."""
    timings: list[StageTiming] = []
    ready: dict[int, datetime] = {0: conversation.created_at}
    for record in conversation.records_in_order():
        start = ready.get(record.turn)
        ran = _seconds(record.started_at, record.completed_at)
        model = min(max(0.0, record.usage.model_seconds), ran)
        timings.append(
            StageTiming(
                stage=record.stage,
                turn=record.turn,
                waited_s=None if start is None else _seconds(start, record.started_at),
                model_s=model,
                other_s=ran - model,
            )
        )
        ready[record.turn] = record.completed_at
    return timings


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
