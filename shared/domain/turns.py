"""Turns: a conversation continues when a request names it (``conversationId``).

Each turn runs the same agents on the same conversation document with stage keys of its own
(``t<turn>:<stage>:<revision>``; turn 0 keeps ``<stage>:<revision>``), so idempotency holds
per turn. A follow-up that arrives

- after the conversation's outcome starts the next turn at once;
- while a turn is running waits in the conversation's queue, and starts when that turn ends;
- while the conversation is escalated to a person goes to the work item (its history and the
  audit trail), not to the agents.

**History policy.** The agents see the earlier turns (the customer's message and the reply it
got) newest first until :data:`HISTORY_TOKEN_BUDGET` tokens (estimated at
:data:`CHARS_PER_TOKEN` characters a token) are used; older turns are **dropped**, not
summarised, and the agents are told how many were left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

MAX_TURNS = 25
"""The most turns one conversation takes: every turn stays in its one document (Cosmos DB caps
an item at 2 MB); a customer who goes on starts a new conversation."""
HISTORY_TOKEN_BUDGET = 1200
CHARS_PER_TOKEN = 4
TO_PERSON = "to_person"
"""The status of a follow-up that went to the work item instead of the agents."""

Timestamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]


class _Doc(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class FollowUp(StrEnum):
    """What became of a follow-up."""

    STARTED = "started"
    QUEUED = "queued"
    TO_WORK_ITEM = "to_work_item"
    ALREADY = "already"
    """The same follow-up (its key) was taken in before: nothing changes."""
    FULL = "full"
    """The conversation has :data:`MAX_TURNS` turns: refused, nothing changes."""


class TurnSummary(_Doc):
    """An earlier turn: what the customer wrote and what became of it."""

    turn: int
    key: str | None = None
    text: str
    status: str
    reply: str | None = None
    received_at: Timestamp
    ended_at: Timestamp | None = None


class QueuedTurn(_Doc):
    """A follow-up waiting for the running turn to end."""

    turn: int
    key: str
    text: str
    idempotency_key: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    received_at: Timestamp


@dataclass(frozen=True)
class EarlierTurn:
    """An earlier turn as the agents see it."""

    turn: int
    text: str
    reply: str | None

    @property
    def tokens(self) -> int:
        return math.ceil((len(self.text) + len(self.reply or "")) / CHARS_PER_TOKEN)


def bounded_history(
    turns: Sequence[EarlierTurn], budget: int = HISTORY_TOKEN_BUDGET
) -> tuple[tuple[EarlierTurn, ...], int]:
    """The most recent turns that fit ``budget`` tokens, oldest first, and how many older
    ones were dropped."""
    kept: list[EarlierTurn] = []
    used = 0
    for turn in sorted(turns, key=lambda t: t.turn, reverse=True):
        if used + turn.tokens > budget:
            break
        kept.append(turn)
        used += turn.tokens
    return tuple(reversed(kept)), len(turns) - len(kept)


def render_earlier(turns: Sequence[EarlierTurn], omitted: int) -> str:
    """The earlier turns for a prompt, outside the customer's current message."""
    if not turns and not omitted:
        return ""
    lines = ["Earlier in this conversation:"]
    if omitted:
        lines.append(f"({omitted} earlier turn(s) left out)")
    for turn in turns:
        lines.append(
            f"<earlier_customer_message turn={turn.turn}>\n{turn.text}\n</earlier_customer_message>"
        )
        lines.append(f"Our reply: {turn.reply}" if turn.reply else "Our reply: (none)")
    return "\n".join(lines) + "\n"
