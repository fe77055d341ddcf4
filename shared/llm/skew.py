"""How much later than planned the server sees our calls, as 429s measure it.

A call planned to fit the window that still draws a 429 arrived later than planned; the
retry-after bounds by how much. ``SkewGuard`` keeps that measured skew, widens every window's
guard by it (each by at most a small share of its own length) and lets it decay with time.
"""

from __future__ import annotations

import math

from shared.llm.endpoint import RateLimitInfo

MAX_GUARD_FRACTION = 0.05
"""What a surprise 429 may add to a window's guard, as a share of that window: a second of
skew widens a 10 s window by at most 0.5 s and a 1 s window by at most 0.05 s."""
WHOLE_SECOND_STEP_S = 0.05
"""A whole-second retry-after only bounds the skew (it is rounded up): each such 429 widens the
guard by this much, up to the cap. Transit skew does not grow with the window, so the step is
the same for a 10 s and a 60 s server (a share of the token window would widen a per-minute
server's 10 s request window by 3 % for one 429)."""
GUARD_HALF_LIFE_S = 20.0
"""The widening halves every this many seconds, whatever the number of answers."""


class SkewGuard:
    """The guard charges are held past a window: a base, plus the skew 429s measured."""

    def __init__(self, base_s: float) -> None:
        self._base = base_s
        self._skew = 0.0  # the measured extra skew, as of ``_skew_at``
        self._skew_at = -math.inf

    @property
    def base_s(self) -> float:
        return self._base

    def guard_for(self, window_s: float) -> float:
        """How long charges are currently held past a window of ``window_s``."""
        return self._base + min(self._skew, MAX_GUARD_FRACTION * window_s)

    def widen(self, retry_after_s: float | None, wait: float, now: float, window_s: float) -> None:
        """A planned call drew a 429 after ``wait``: exactly the skew when the retry-after has
        a fraction (``retry-after-ms``), only an upper bound when it is whole seconds, so then
        step up by ``WHOLE_SECOND_STEP_S`` on each 429, up to the cap (a share of the token
        window, ``window_s``)."""
        self.decay(now)
        precise = retry_after_s is not None and retry_after_s != math.floor(retry_after_s)
        if precise:
            self._skew = max(self._skew, wait)
        else:
            step = min(wait, WHOLE_SECOND_STEP_S)
            self._skew = min(self._skew + step, MAX_GUARD_FRACTION * window_s)
        self._skew_at = now

    def decay(self, now: float) -> bool:
        """Halve the skew every ``GUARD_HALF_LIFE_S``; whether it changed."""
        if self._skew <= 0.0 or now <= self._skew_at:
            return False
        self._skew *= 0.5 ** ((now - self._skew_at) / GUARD_HALF_LIFE_S)
        self._skew_at = now
        if self._skew < 1e-3:
            self._skew = 0.0
        return True


def had_room(rate: RateLimitInfo | None, charge: float | None) -> bool:
    """Whether a 429's own remaining figures show room for the call (a stray 429)."""
    if rate is None or rate.remaining_tokens is None or rate.remaining_requests is None:
        return False
    return rate.remaining_requests >= 1 and rate.remaining_tokens >= (charge or 0.0)
