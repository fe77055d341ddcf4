"""Budgets: how long a message may keep being rescheduled, and how many tokens a customer may use.

``decide_reschedule`` is the pipeline's rule for a ``RetryLater``: re-send the message at
``now + delay`` (spread a little, so a crowd of throttled messages does not come back at the same
instant) unless the delays it has been given would pass ``total_budget_s``; then the answer is
None and the conversation fails with ``total_budget_reason``. ``transient_delay`` is the backoff
after any other transient failure.

A per-customer daily token budget (optional, ``CUSTOMER_DAILY_TOKEN_BUDGET``) caps the tokens one
customer's conversations may spend per UTC day. A call is refused before it is sent when the
customer's spend so far plus the call's estimate would pass the budget; after the call the actual
tokens are added. Concurrent calls of one customer can each pass the check, so the cap may be
overshot by the calls in flight at the moment it is reached, never by more.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Protocol

from shared.config import LLMSettings
from shared.errors import BudgetExceeded, CircuitOpen

RESCHEDULE_JITTER = 0.1
"""A rescheduled message comes back after its delay plus up to this fraction of it."""


def decide_reschedule(
    waited_s: float,
    now: datetime,
    delay_s: float,
    settings: LLMSettings,
    *,
    jitter: float = RESCHEDULE_JITTER,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to re-send a message that must wait ``delay_s``; None when the total budget is spent.

    ``waited_s`` is what the message has been rescheduled by before (the envelope carries it),
    so a message that keeps being throttled ends after ``settings.total_budget_s`` rather than
    circling forever. The budget adds up delays, never subtracts two wall-clock readings: a
    clock jump can neither spend it (a forward jump used to fail every waiting conversation)
    nor refund it. Only the enqueue time is wall time, because the broker needs one.
    """
    if delay_s < 0:
        raise ValueError("delay_s must not be negative")
    spread = (rng or random).uniform(0.0, jitter) if jitter > 0 else 0.0
    delay = delay_s * (1.0 + spread)
    if waited_s + delay > settings.total_budget_s:
        return None
    return now + timedelta(seconds=delay)


def total_budget_reason(waited_s: float, attempts: int, settings: LLMSettings, cause: str) -> str:
    """The dead-letter reason for a message whose total retry budget is spent."""
    return (
        f"gave up after waiting {waited_s:.0f}s over {attempts} reschedule(s); the total budget "
        f"is {settings.total_budget_s:.0f}s; last cause: {cause}"
    )


TRANSIENT_BASE_S = 2.0
TRANSIENT_CAP_S = 60.0


def transient_delay(attempt: int, exc: Exception) -> float:
    """How long a message waits after a transient failure: capped exponential backoff by its
    reschedule count, and never less than an open circuit's own remaining interval."""
    delay = min(TRANSIENT_CAP_S, TRANSIENT_BASE_S * 2.0 ** min(attempt, 16))
    return max(delay, exc.retry_in_s) if isinstance(exc, CircuitOpen) else delay


def utc_day(epoch_s: float) -> str:
    """The UTC calendar day (``yyyy-mm-dd``) a budget is counted in."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d")


class CustomerBudget(Protocol):
    """A customer's token spend per UTC day against a fixed daily limit."""

    limit: int

    async def used(self, customer_id: str, day: str) -> int: ...

    async def add(self, customer_id: str, day: str, tokens: int) -> int:
        """Add ``tokens`` to the day's spend and return the new total."""
        ...

    async def close(self) -> None: ...


async def check_budget(budget: CustomerBudget, customer_id: str, day: str, estimate: int) -> None:
    """Raise ``BudgetExceeded`` if a call estimated at ``estimate`` tokens would pass the budget."""
    spent = await budget.used(customer_id, day)
    if spent + estimate > budget.limit:
        raise BudgetExceeded(
            f"daily token budget reached: {spent} of {budget.limit} tokens used on {day} (UTC) "
            f"and this call needs up to {estimate}; it resets at midnight UTC"
        )
