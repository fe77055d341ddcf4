"""Time as the LLM guards see it: a monotonic clock for waits, wall time for shared leases.

Everything that waits or measures takes a ``Clock`` so that unit tests drive limiters and breakers
through minutes of simulated time in microseconds, and nothing reads the system clock directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """The three clock operations the LLM layer needs."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (waits, windows, cooldowns)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (shared leases, calendar days)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (non-positive values yield to the event loop and return)."""
        ...


class SystemClock:
    """The real clocks and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to, or when someone sleeps on it.

    ``sleep`` advances the clock by the requested amount at once, which is what a single waiter
    would observe; concurrent sleepers each advance it, so use it for sequential scenarios.
    """

    def __init__(self, *, start: float = 1_000.0, wall_start: float = 1_750_000_000.0) -> None:
        self._mono = start
        self._offset = wall_start - start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
