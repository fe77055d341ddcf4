"""Priority lanes: interactive work takes a deployment's quota first, batch keeps a floor.

The lane of a model call is the ``Priority`` of the message being handled. It travels in a
context variable, so every call made while handling one message (and every task started from
it) is in that message's lane without threading a parameter through the agents:

    with lane(Priority.BATCH):
        await handle(message)

Within one deployment's limiter (``shared.llm.limiter.DeploymentQuota``) the lanes share one
quota this way:

* an interactive call books the earliest slot the windows allow, as before;
* a batch call books only a slot it can use at once (within ``BATCH_BOOK_AHEAD_S``); for a
  later one it waits unbooked and plans again, so an interactive call arriving meanwhile takes
  the slot first. A batch call that cannot be served within its wait budget is sent away
  (``RetryLater``) like any other;
* while interactive calls are about, batch may use at most the window minus a reserve for
  them: their share of the last window plus ``INTERACTIVE_MARGIN``, so an interactive call
  usually finds room at once instead of waiting for batch charges to leave the window;
* while batch calls are waiting, interactive may use at most ``1 - MIN_BATCH_SHARE`` of the
  window, so batch always progresses at ``MIN_BATCH_SHARE`` of the quota or more.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from shared.domain.messages import Priority
from shared.llm.windows import SlidingWindow

INTERACTIVE = Priority.INTERACTIVE
BATCH = Priority.BATCH
LANES: tuple[Priority, ...] = (INTERACTIVE, BATCH)

MIN_BATCH_SHARE = 0.2
"""The share of every window batch keeps while it has work, however busy interactive is."""
INTERACTIVE_MARGIN = 0.15
"""Batch leaves interactive what it used in the last window (as a share of the window, in
whichever window that share is largest, tokens or requests) plus this share of the window:
interactive work arrives in bursts."""
BATCH_PACE_BURST_FRACTION = 0.02
"""Batch is paced with a burst of 2 % of a window (interactive: 20 %), so its calls do not
arrive in clumps that fill the short request window when an interactive call needs it."""
BATCH_BOOK_AHEAD_S = 0.05
"""A batch call books a slot only this close to now; later slots stay open for interactive."""

_current: ContextVar[Priority] = ContextVar("llm_lane", default=INTERACTIVE)


def current_lane() -> Priority:
    """The lane of the calls made now (interactive unless a ``lane`` block says otherwise)."""
    return _current.get()


@contextmanager
def lane(priority: Priority | str) -> Iterator[None]:
    """Make the model calls inside the block (and the tasks it starts) calls of ``priority``."""
    token = _current.set(Priority(priority))
    try:
        yield
    finally:
        _current.reset(token)


def batch_books_ahead(
    core: Sequence[SlidingWindow], batch: Sequence[SlidingWindow], now: float
) -> bool:
    """Whether batch may book a slot later than now: only while, in every one of the
    deployment's windows (``core``: tokens and requests, whichever binds), batch's share
    (``batch``: its windows beside them) of what was charged in the last window and booked
    ahead is under its floor (the queue ahead may be longer than a window)."""
    for window, batch_window in zip(core, batch, strict=True):
        if MIN_BATCH_SHARE * window.limit < 1.0:
            continue  # too small to hold a share (one request per second)
        since = now - window.window_s
        total = window.used(since=since)
        if batch_window.used(since=since) >= MIN_BATCH_SHARE * max(total, window.limit):
            return False
    return True


def set_lane_limits(
    core: Sequence[SlidingWindow],
    lanes: Mapping[Priority, Sequence[SlidingWindow]],
    now: float,
    *,
    batch_waiting: bool,
) -> None:
    """Batch leaves room for the interactive demand just seen; interactive leaves batch its
    floor while batch has work waiting."""
    interactive_use = max(
        lane_window.used(since=now - window.window_s) / window.limit
        for window, lane_window in zip(core, lanes[INTERACTIVE], strict=True)
    )
    reserve = interactive_use + INTERACTIVE_MARGIN if interactive_use > 0 else 0.0
    batch_share = max(MIN_BATCH_SHARE, 1.0 - reserve)
    interactive_share = 1.0 - MIN_BATCH_SHARE if batch_waiting else 1.0
    for i, window in enumerate(core):
        lanes[BATCH][i].set_limit(max(1.0, window.limit * batch_share))
        lanes[INTERACTIVE][i].set_limit(max(1.0, window.limit * interactive_share))
