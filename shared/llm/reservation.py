"""A booked slot in a deployment's quota: what ``shared.llm.limiter`` hands its callers."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain.messages import Priority
from shared.llm.accounting import CallRecord, CallSize
from shared.llm.windows import Charge, SlidingWindow


@dataclass
class Reservation:
    """A booked slot: its charges in every window, and when it may be sent."""

    deployment: str
    tokens: int
    at: float
    charges: list[tuple[SlidingWindow, Charge]] = field(default_factory=list)
    sent_at: float | None = None
    size: CallSize | None = None
    record: CallRecord | None = None
    lane: Priority = Priority.INTERACTIVE


def call_size(tokens: int | CallSize) -> CallSize:
    """A bare token count is a charge that no accounting model splits (it is all ``max``)."""
    return tokens if isinstance(tokens, CallSize) else CallSize(0, tokens)
