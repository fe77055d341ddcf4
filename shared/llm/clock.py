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
