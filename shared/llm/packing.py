"""Size-aware admission: let a smaller call take room a larger one cannot use yet, never for long.

First-come admission of whole calls leaves a window's room empty whenever the call at the head
of the queue is larger than the room: on average half a call of every window. With calls of
13-21 % of a window (10,000 TPM under Azure's accounting) that caps a saturated deployment near
0.91 of its TPM. Admitting any waiting call that fits the room instead fills it, but a large call
could then wait forever behind a stream of small ones.

So the limiter (``DeploymentQuota.hold``) keeps large calls (``PACK_MIN_FRACTION`` of a token
window or more) unbooked while they wait: each sleeps until the moment it alone would fit and
plans again, so whichever call fits the room first takes it; when several fit at once the larger
goes first (``steps_aside``: best fit, and the larger call would wait longest for room). Only
the oldest waiter (the head) ages: once it has been the head for ``PACK_AGE_FRACTION`` of the
window it books the next slot that fits it, and from then on no later call can take that room.
Its wait beyond first-come is therefore bounded by the aging time, and every waiter becomes the
head in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PACK_MIN_FRACTION = 0.05
"""Calls charged at least this share of the token window are admitted size-aware; smaller
ones pack a window well enough first-come, and book ahead as before."""
PACK_AGE_FRACTION = 0.3
"""How long (as a share of the token window) the head waiter lets smaller calls go first."""


YIELD_S = 0.001
"""How long a call that fits steps aside for waiters that fill the room better."""
MAX_YIELDS = 20
"""A call steps aside at most this many times, whatever the others do."""


@dataclass
class _Waiter:
    order: int
    charge: float
    wake_at: float
    yields: int = 0


@dataclass
class WaitingRoom:
    """The unbooked waiters of one deployment, in arrival order, and how long the head has
    been the head. Keys are whatever identifies a call to its caller (hashable)."""

    _waiters: dict[object, _Waiter] = field(default_factory=dict)
    _seq: int = 0
    _head_since: float = -math.inf

    def __len__(self) -> int:
        return len(self._waiters)

    def enter(self, key: object, charge: float, wake_at: float, now: float) -> None:
        """``key`` (charged ``charge``) waits, until ``wake_at`` for now; a call already
        waiting keeps its place in the queue."""
        found = self._waiters.get(key)
        if found is not None:
            found.wake_at = wake_at
            return
        if not self._waiters:
            self._head_since = now
        self._waiters[key] = _Waiter(self._seq, charge, wake_at)
        self._seq += 1

    def leave(self, key: object, now: float) -> None:
        """``key`` booked its slot or gave up; the next waiter becomes the head now."""
        if key not in self._waiters:
            return
        was_head = self.head() == key
        del self._waiters[key]
        if was_head:
            self._head_since = now

    def head(self) -> object | None:
        if not self._waiters:
            return None
        return min(self._waiters, key=lambda k: self._waiters[k].order)

    def aged_at(self, key: object, window_s: float) -> float:
        """When ``key`` may book ahead: once it has been the head for the aging time
        (``math.inf`` while it is not the head)."""
        if self.head() != key:
            return math.inf
        return self._head_since + PACK_AGE_FRACTION * window_s

    def steps_aside(self, key: object, charge: float, room: float, now: float) -> bool:
        """Whether a call of ``charge`` that fits the ``room`` now should let a larger waiter
        that is due now and fits too go first (best fit: room left over is quota lost for
        good, and the larger call would wait longest for room of its own). A call steps aside
        at most ``MAX_YIELDS`` times."""
        mine = self._waiters.get(key)
        if mine is not None and mine.yields >= MAX_YIELDS:
            return False
        larger = any(
            other != key and charge < w.charge <= room and w.wake_at <= now
            for other, w in self._waiters.items()
        )
        if larger and mine is not None:
            mine.yields += 1
        return larger
