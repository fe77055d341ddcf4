"""Per-deployment rate limiting with Azure OpenAI's semantics (see the package docstring).

A deployment with ``T`` tokens per minute and ``R`` requests per minute is evaluated on three
rolling windows over the requests it has admitted:

* tokens:   10 s window, capacity ``max(1, T // 6)``;
* requests:  1 s window, capacity ``ceil(R / 60)``;
* requests: 10 s window, capacity ``ceil(R / 6)``.

A request costs its estimate on arrival (prompt tokens + max_tokens); it is admitted only if it
fits all three windows, and only admitted requests are charged. A cost larger than the token
window is clamped to it, so an oversized request waits for an empty window instead of being
refused forever. An admitted request leaves its window when ``now - t_admitted >= window``,
which makes the wait before a refused request would fit exact.

Everything here is synchronous and runs on the event loop thread, so each decision is atomic.
The clock is injected (``time.monotonic`` by default) so that tests move time by hand.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

TOKEN_WINDOW_S = 10.0
SHORT_REQUEST_WINDOW_S = 1.0
LONG_REQUEST_WINDOW_S = 10.0

Clock = Callable[[], float]

# Guards the float comparison at a window edge: an event admitted at t is gone at t + window.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Decision:
    """The outcome of one admission check.

    ``retry_after_ms`` is 0 when admitted; otherwise the exact wait (rounded up to the
    millisecond) until the same request would be admitted if nothing else arrived.
    ``remaining_*`` describe what could be admitted right now, after this decision.
    """

    admitted: bool
    retry_after_ms: int
    remaining_requests: int
    remaining_tokens: int
    limited_by: str | None = None
    """``"tokens"`` or ``"requests"`` when refused."""


class DeploymentLimiter:
    """The three rolling windows of one deployment."""

    def __init__(self, *, tpm: int, rpm: int, clock: Clock) -> None:
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        self.tpm = tpm
        self.rpm = rpm

    @property
    def tpm(self) -> int:
        return self._tpm

    @tpm.setter
    def tpm(self, value: int) -> None:
        """Change the quota at runtime; the admitted history is kept."""
        self._tpm = value
        self.token_capacity = max(1, value // 6)

    @property
    def rpm(self) -> int:
        return self._rpm

    @rpm.setter
    def rpm(self, value: int) -> None:
        self._rpm = value
        self.requests_per_1s = max(1, math.ceil(value / 60))
        self.requests_per_10s = max(1, math.ceil(value / 6))

    def try_acquire(self, cost: int) -> Decision:
        """Admit and charge ``cost`` tokens if every window has room; otherwise refuse (free)."""
        now = self._clock()
        self._expire(now)
        charged = self.charge_for(cost)
        wait_s, limited_by = self._wait(charged, now)
        if wait_s > 0:
            return Decision(
                admitted=False,
                retry_after_ms=_ceil_ms(wait_s),
                remaining_requests=self._remaining_requests(now),
                remaining_tokens=self._remaining_tokens(),
                limited_by=limited_by,
            )
        self._events.append((now, charged))
        self._tokens_in_window += charged
        return Decision(
            admitted=True,
            retry_after_ms=0,
            remaining_requests=self._remaining_requests(now),
            remaining_tokens=self._remaining_tokens(),
        )

    def peek(self, cost: int = 0) -> Decision:
        """What ``try_acquire(cost)`` would answer, without charging anything."""
        now = self._clock()
        self._expire(now)
        wait_s, limited_by = self._wait(self.charge_for(cost), now)
        return Decision(
            admitted=wait_s <= 0,
            retry_after_ms=_ceil_ms(wait_s) if wait_s > 0 else 0,
            remaining_requests=self._remaining_requests(now),
            remaining_tokens=self._remaining_tokens(),
            limited_by=limited_by if wait_s > 0 else None,
        )

    def charge_for(self, cost: int) -> int:
        """The tokens a request of ``cost`` is charged: clamped to the token window."""
        return min(max(0, cost), self.token_capacity)

    def reset(self) -> None:
        """Forget every admitted request (fresh windows)."""
        self._events.clear()
        self._tokens_in_window = 0

    def _expire(self, now: float) -> None:
        horizon = now - TOKEN_WINDOW_S + _EPSILON
        while self._events and self._events[0][0] <= horizon:
            _, tokens = self._events.popleft()
            self._tokens_in_window -= tokens

    def _wait(self, charged: int, now: float) -> tuple[float, str | None]:
        token_wait = self._token_wait(charged, now)
        request_wait = max(
            self._request_wait(SHORT_REQUEST_WINDOW_S, self.requests_per_1s, now),
            self._request_wait(LONG_REQUEST_WINDOW_S, self.requests_per_10s, now),
        )
        if token_wait <= 0 and request_wait <= 0:
            return 0.0, None
        if token_wait >= request_wait:
            return token_wait, "tokens"
        return request_wait, "requests"

    def _token_wait(self, charged: int, now: float) -> float:
        excess = self._tokens_in_window + charged - self.token_capacity
        if excess <= 0:
            return 0.0
        freed = 0
        for admitted_at, tokens in self._events:
            freed += tokens
            if freed >= excess:
                return admitted_at + TOKEN_WINDOW_S - now
        return TOKEN_WINDOW_S  # unreachable: charged <= capacity, so emptying always suffices

    def _request_wait(self, window: float, capacity: int, now: float) -> float:
        in_window = self._in_window(window, now)
        excess = len(in_window) + 1 - capacity
        if excess <= 0:
            return 0.0
        return in_window[excess - 1] + window - now

    def _in_window(self, window: float, now: float) -> list[float]:
        """Admission times inside the last ``window`` seconds, oldest first."""
        horizon = now - window + _EPSILON
        times: list[float] = []
        for admitted_at, _ in reversed(self._events):
            if admitted_at <= horizon:
                break
            times.append(admitted_at)
        times.reverse()
        return times

    def _remaining_requests(self, now: float) -> int:
        return max(
            0,
            min(
                self.requests_per_1s - len(self._in_window(SHORT_REQUEST_WINDOW_S, now)),
                self.requests_per_10s - len(self._in_window(LONG_REQUEST_WINDOW_S, now)),
            ),
        )

    def _remaining_tokens(self) -> int:
        return max(0, self.token_capacity - self._tokens_in_window)


def _ceil_ms(seconds: float) -> int:
    # Rounding noise (7.0000000001 s) must not turn into an extra millisecond.
    return max(1, math.ceil(seconds * 1000 - 1e-6))
