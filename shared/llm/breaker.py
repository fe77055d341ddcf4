"""A circuit breaker per deployment, so a failing deployment is skipped instead of hammered.

Closed: calls flow; it opens after ``failures`` consecutive failures, or when at least
``min_calls`` calls in the last ``window_s`` seconds failed at a rate of ``error_rate`` or more
(5xx, timeouts, broken connections and malformed answers count; 429s and content-filter refusals
do not: they say nothing about the deployment's health). Open: no calls for ``cooldown_s``.
Half-open: exactly one probe call goes through; its success closes the breaker, its failure opens
it again for a doubled cooldown (capped), so a deployment that stays down is probed ever less often.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from shared.llm.clock import Clock, SystemClock

log = logging.getLogger(__name__)

MAX_COOLDOWN_FACTOR = 8


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    cooldown_s: float = 15.0
    error_rate: float = 0.5
    window_s: float = 30.0
    min_calls: int = 10


class CircuitBreaker:
    """The breaker of one deployment."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self._policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._recent: deque[tuple[float, bool]] = deque()
        self._opened_at = 0.0
        self._cooldown = policy.cooldown_s
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self.retry_in() <= 0:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when calls may go now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock.monotonic())

    def can_call(self) -> bool:
        """Whether a call could go now, without claiming the half-open probe."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probe_out
        )

    def acquire(self) -> bool:
        """Claim the right to call now; in half-open only one caller gets it until it reports."""
        if not self.can_call():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = True
        return True

    def cancel(self) -> None:
        """The claimed call was never made; free the half-open probe for someone else."""
        self._probe_out = False

    def success(self) -> None:
        self._record(ok=True)
        self._consecutive = 0
        if self._state is not BreakerState.CLOSED:
            self._probe_out = False
            self._cooldown = self._policy.cooldown_s
            self._recent.clear()
            self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self._record(ok=False)
        self._consecutive += 1
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False
            self._cooldown = min(self._cooldown * 2, self._policy.cooldown_s * MAX_COOLDOWN_FACTOR)
            self._open()
        elif self._state is BreakerState.CLOSED and self._should_open():
            self._open()

    def _record(self, *, ok: bool) -> None:
        now = self._clock.monotonic()
        self._recent.append((now, ok))
        while self._recent and self._recent[0][0] <= now - self._policy.window_s:
            self._recent.popleft()

    def _should_open(self) -> bool:
        if self._consecutive >= self._policy.failures:
            return True
        calls = len(self._recent)
        if calls < self._policy.min_calls:
            return False
        failed = sum(1 for _, ok in self._recent if not ok)
        return failed / calls >= self._policy.error_rate

    def _open(self) -> None:
        self._opened_at = self._clock.monotonic()
        self._set(BreakerState.OPEN)
        log.warning(
            "circuit for deployment %s opened for %.1fs after %d consecutive failure(s)",
            self.name,
            self._cooldown,
            self._consecutive,
        )

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is BreakerState.CLOSED:
            log.info("circuit for deployment %s closed", self.name)
        if self._on_change is not None:
            self._on_change(self.name, state)


class Breakers:
    """One breaker per deployment, made on first use."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Clock | None = None,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock or SystemClock()
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def for_deployment(self, deployment: str) -> CircuitBreaker:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            breaker = CircuitBreaker(
                deployment, self._policy, clock=self._clock, on_change=self._on_change
            )
            self._breakers[deployment] = breaker
        return breaker

    def set_listener(self, on_change: Callable[[str, BreakerState], None]) -> None:
        """Report state changes of every breaker (existing and future) to ``on_change``."""
        self._on_change = on_change
        for breaker in self._breakers.values():
            breaker._on_change = on_change
