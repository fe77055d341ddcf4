"""What the server counts beyond our own charges, booked so later calls plan around it.

The remaining-quota headers on an answer say what the server has counted in its window. Beyond
our own charges (and the other instances' shares) that is usage we did not know about: another
instance over its share, a different estimator. It is booked as a phantom charge at the call's
send time, so it leaves no later than the server lets it go.

The server may compute the headers when it admits the call (our charges up to the send time are
what it has seen) or when it answers (our charges up to now); the larger count of ours is
believed, so our own traffic is never mistaken for someone else's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.llm.windows import Charge, SlidingWindow

log = logging.getLogger(__name__)


def _ours(window: SlidingWindow, sent: float, now: float) -> float:
    span = window.window_s
    return max(
        window.used(since=sent - span, until=sent),
        window.used(since=now - span, until=now),
    )


def book_unknown_tokens(
    deployment: str,
    window: SlidingWindow,
    global_limit: float,
    remaining: int,
    sent: float,
    now: float,
    *,
    tolerance: float,
) -> None:
    """Book in the token ``window`` what the server counts beyond ours, past ``tolerance``."""
    others_allowed = max(0.0, global_limit - window.limit)
    unknown = (global_limit - remaining) - _ours(window, sent, now) - others_allowed
    if unknown > tolerance:
        log.info(
            "deployment %s: server counts %.0f more than booked; holding them back",
            deployment,
            unknown,
        )
        window.add(Charge(sent, unknown))


def book_unknown_requests(
    deployment: str,
    windows: Sequence[SlidingWindow],
    global_limits: Sequence[float],
    remaining: int,
    sent: float,
    now: float,
) -> None:
    """Azure reports the smaller room of the 1 s and 10 s request windows. Predict that
    figure from our own requests; only a reading below the prediction reveals someone
    else's, and it is booked in the window whose room the prediction found smallest."""
    gaps: list[tuple[float, SlidingWindow, float]] = []
    for window, limit in zip(windows, global_limits, strict=True):
        others_allowed = max(0.0, limit - window.limit)
        gaps.append((limit - _ours(window, sent, now) - others_allowed, window, limit))
    predicted, binding, _ = min(gaps, key=lambda g: g[0])
    unknown = predicted - remaining
    if unknown >= 1.0:
        log.info(
            "deployment %s: server counts %.0f more requests than booked; holding them back",
            deployment,
            unknown,
        )
        binding.add(Charge(sent, unknown))
