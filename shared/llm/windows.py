"""Sliding windows of charges: the arithmetic under ``shared.llm.limiter``.

A window admits charges while those made within its last ``window_s`` seconds total at most its
limit. Charges stay ``guard_s`` longer than the window, to cover transit and clock skew.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_GUARD_S = 0.1
"""Charges are held this much longer than the window, to cover transit and clock skew."""


@dataclass
class Charge:
    """An amount booked in a window at ``at`` (monotonic seconds)."""

    at: float
    amount: float


class SlidingWindow:
    """Charges made within the last ``window_s`` seconds may total at most ``limit``."""

    def __init__(self, limit: float, window_s: float, *, guard_s: float = DEFAULT_GUARD_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._base_window = window_s
        self._guard = guard_s
        self.limit = 0.0
        self.window_s = window_s
        self.set_limit(limit)
        self._charges: list[Charge] = []

    def set_limit(self, limit: float) -> None:
        """Change the limit; a fractional limit below one becomes one per stretched window."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        if limit < 1.0:
            # A share of "0.4 requests per second" is honoured as 1 request per 2.5 s.
            self.limit, self.window_s = 1.0, self._base_window / limit
        else:
            self.limit, self.window_s = limit, self._base_window

    def set_guard(self, guard_s: float) -> None:
        self._guard = guard_s

    @property
    def span(self) -> float:
        """How long a charge stays in this window."""
        return self.window_s + self._guard

    def prune(self, now: float) -> None:
        """Forget charges that can no longer count at ``now`` or later."""
        horizon = now - self.span
        if self._charges and any(c.at <= horizon for c in self._charges):
            self._charges = [c for c in self._charges if c.at > horizon]

    def used(self, *, since: float, until: float = math.inf) -> float:
        """Total charged in ``(since, until]``."""
        return sum(c.amount for c in self._charges if since < c.at <= until)

    def earliest(self, amount: float, not_before: float) -> float:
        """The first moment at or after ``not_before`` when ``amount`` fits in the window.

        Charges are kept in booking order, so a newcomer only needs the oldest ones to expire:
        find the shortest prefix whose expiry leaves room, then wait for its newest member.
        An amount larger than the whole limit fits only into an empty window.
        """
        need = min(amount, self.limit)
        total = sum(c.amount for c in self._charges)
        start = not_before
        if self._charges:
            start = max(start, max(c.at for c in self._charges))
        if total + need <= self.limit:
            return start
        expire_at = -math.inf
        for charge in self._charges:
            total -= charge.amount
            expire_at = max(expire_at, charge.at + self.span)
            if total + need <= self.limit:
                return max(start, expire_at)
        return max(start, expire_at)

    def charges(self) -> tuple[Charge, ...]:
        """The charges held, in booking order."""
        return tuple(self._charges)

    def first_expiry(self) -> float | None:
        """When the oldest charge leaves the window; None when it holds none."""
        return min(c.at for c in self._charges) + self.span if self._charges else None

    def add(self, charge: Charge) -> None:
        self._charges.append(charge)

    def remove(self, charge: Charge) -> None:
        for i, held in enumerate(self._charges):
            if held is charge:
                del self._charges[i]
                return


def peak_use(windows: Iterable[SlidingWindow], window_s: float, now: float) -> float:
    """The most the charges of ``windows`` together take of any ``window_s`` stretch that ends
    at ``now`` or later: what they hold of a window from now on.

    Calls booked ahead spread over several windows; summing everything from ``now - window_s``
    on would count a backlog paced over a minute as a minute's worth in one window.
    """
    charges = sorted((c.at, c.amount) for w in windows for c in w.charges())
    best = sum(amount for at, amount in charges if now - window_s < at <= now)
    # Stretches ending at each later charge, by two pointers over the sorted charges.
    total, start = 0.0, 0
    for at, amount in charges:
        total += amount
        while charges[start][0] <= at - window_s:
            total -= charges[start][1]
            start += 1
        if at > now:
            best = max(best, total)
    return best
