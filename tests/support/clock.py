"""Clocks that only move when a test says so: ``FakeClock`` for code that takes
``clock: () -> float``, ``ManualClock`` for the LLM guards' ``Clock`` (monotonic, time, sleep)."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
