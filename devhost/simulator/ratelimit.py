"""Per-deployment rate limiting with Azure OpenAI's semantics (see the package docstring).

The windows, charges and reports below are those of the default ``azure`` accounting profile;
``devhost.simulator.accounting`` describes the others, which change the token window, the
request windows and how remaining room is reported.

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
from dataclasses import dataclass, replace

from devhost.simulator.accounting import AZURE, AccountingProfile

MINUTE_S = 60.0
FORCED_RETRY_AFTER_MS = 1000
"""``retry-after-ms`` of a forced 429 when the quota itself would have admitted the request."""

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
    """The rolling windows of one deployment, as its accounting profile defines them."""

    def __init__(
        self, *, tpm: int, rpm: int, clock: Clock, profile: AccountingProfile = AZURE
    ) -> None:
        self._clock = clock
        self._events: deque[tuple[float, int, bool]] = deque()
        """(when, tokens, whether it is a request): admissions, and the answers' usage of a
        profile that charges it (tokens only)."""
        self._profile = profile
        self.tpm = tpm
        self.rpm = rpm

    @property
    def profile(self) -> AccountingProfile:
        return self._profile

    @profile.setter
    def profile(self, value: AccountingProfile) -> None:
        """Change the accounting at runtime; the admitted history is kept."""
        self._profile = value
        self._recompute()

    @property
    def tpm(self) -> int:
        return self._tpm

    @tpm.setter
    def tpm(self, value: int) -> None:
        """Change the quota at runtime; the admitted history is kept."""
        self._tpm = value
        if hasattr(self, "_rpm"):
            self._recompute()

    @property
    def rpm(self) -> int:
        return self._rpm

    @rpm.setter
    def rpm(self, value: int) -> None:
        self._rpm = value
        self._recompute()

    def _recompute(self) -> None:
        profile = self._profile
        self.token_window_s = profile.token_window_s
        self.token_capacity = profile.token_capacity(self._tpm)
        self.request_windows = profile.request_windows(self._tpm, self._rpm)
        # Azure's two request windows by name (the other profile has only the 10 s one).
        self.requests_per_1s = max(1, math.ceil(self._rpm / 60))
        self.requests_per_10s = self.request_windows[-1][1]
        self._history_s = max(
            self.token_window_s,
            *(window for window, _ in self.request_windows),
            MINUTE_S if profile.per_minute_remaining else 0.0,
        )

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
                remaining_tokens=self._remaining_tokens(now),
                limited_by=limited_by,
            )
        self._events.append((now, charged, True))
        return Decision(
            admitted=True,
            retry_after_ms=0,
            remaining_requests=self._remaining_requests(now),
            remaining_tokens=self._remaining_tokens(now),
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
            remaining_tokens=self._remaining_tokens(now),
            limited_by=limited_by if wait_s > 0 else None,
        )

    def forced_refusal(self, cost: int) -> Decision:
        """The answer to a request of ``cost`` refused by a forced 429 (``x-sim-fault: 429``):
        nothing charged, the windows' own figures, and a wait of at least
        ``FORCED_RETRY_AFTER_MS`` (the quota's own wait where it is longer)."""
        seen = self.peek(cost)
        return replace(
            seen, admitted=False, retry_after_ms=max(seen.retry_after_ms, FORCED_RETRY_AFTER_MS)
        )

    def charge_usage(self, tokens: int) -> int:
        """An admitted call was answered having used ``tokens``: a profile that charges usage
        charges them now (the others charged on arrival); returns what was charged."""
        if not self._profile.charged_on_answer or tokens <= 0:
            return 0
        now = self._clock()
        self._expire(now)
        self._events.append((now, tokens, False))
        return tokens

    def charge_for(self, cost: int) -> int:
        """The tokens a request of ``cost`` is charged: clamped to the token window."""
        return min(max(0, cost), self.token_capacity)

    def reset(self) -> None:
        """Forget every admitted request (fresh windows)."""
        self._events.clear()

    def _expire(self, now: float) -> None:
        horizon = now - self._history_s + _EPSILON
        while self._events and self._events[0][0] <= horizon:
            self._events.popleft()

    def _tokens_in(self, window: float, now: float) -> int:
        horizon = now - window + _EPSILON
        total = 0
        for admitted_at, tokens, _ in reversed(self._events):
            if admitted_at <= horizon:
                break
            total += tokens
        return total

    def _wait(self, charged: int, now: float) -> tuple[float, str | None]:
        token_wait = self._token_wait(charged, now)
        request_wait = max(
            self._request_wait(window, capacity, now) for window, capacity in self.request_windows
        )
        if token_wait <= 0 and request_wait <= 0:
            return 0.0, None
        if token_wait >= request_wait:
            return token_wait, "tokens"
        return request_wait, "requests"

    def _token_wait(self, charged: int, now: float) -> float:
        window = self.token_window_s
        need = self._profile.room_needed(charged)
        excess = self._tokens_in(window, now) + need - self.token_capacity
        if excess <= 0:
            return 0.0
        horizon = now - window + _EPSILON
        freed = 0
        for admitted_at, tokens, _ in self._events:
            if admitted_at <= horizon:
                continue
            freed += tokens
            if freed >= excess:
                return admitted_at + window - now
        return window  # unreachable: charged <= capacity, so emptying always suffices

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
        for admitted_at, _, request in reversed(self._events):
            if admitted_at <= horizon:
                break
            if request:
                times.append(admitted_at)
        times.reverse()
        return times

    def _remaining_requests(self, now: float) -> int:
        if self._profile.per_minute_remaining:
            window, capacity = self.request_windows[-1]
            per_minute = int(capacity * round(MINUTE_S / window))
            return max(0, per_minute - len(self._in_window(MINUTE_S, now)))
        return max(
            0,
            min(
                capacity - len(self._in_window(window, now))
                for window, capacity in self.request_windows
            ),
        )

    def _remaining_tokens(self, now: float) -> int:
        if self._profile.per_minute_remaining:
            return max(0, self._tpm - self._tokens_in(MINUTE_S, now))
        return max(0, self.token_capacity - self._tokens_in(self.token_window_s, now))


def _ceil_ms(seconds: float) -> int:
    # Rounding noise (7.0000000001 s) must not turn into an extra millisecond.
    return max(1, math.ceil(seconds * 1000 - 1e-6))
