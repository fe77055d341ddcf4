"""The fullest a token window can be, on average, with whole calls in fixed proportions.

Every call stays in a sliding window equally long, so over time the window holds the calls in
the proportions they are made (one of each per conversation). The best average is a linear
programme over the sets of whole calls that fit one window: maximise the mean charge held,
subject to equal mean counts of every call. Its optimum mixes at most as many sets as there are
calls, so every such mix of the sets is tried (about 100,000 for the bench's calls, a second).
Every set that fits counts, not only those with no room for one more call: with calls of 120,
900 and 400 against 1,666 tokens, every such full set that holds the 900 holds three 120s, and
no mix of full sets holds the three calls equally often.
It bounds any admission order from above: first-come, size-aware, or one that knows the future.

A window whose mix of calls stays the same from one window to the next admits each call at the
rate of its count in the mix, so that mix holds whole conversations (equal counts of every
call): ``fullest_repeating_window``. Beating it takes windows that alternate between mixes, so
that one call waits while the others fill the window, and then the other way round.
"""

from __future__ import annotations

import functools
import itertools


def fullest_mean_window(charges: list[int], limit: int) -> float:
    """The largest mean share of ``limit`` that calls of ``charges``, made one of each in
    turn, can hold in a window. Every set of calls that fits is enumerated, so it is meant for
    calls of a few per cent of the window or more (``bench.quota.ideal_packing`` does not ask
    for smaller ones: they pack a window to within a call)."""
    return _fullest_mean_window(tuple(charges), limit)


@functools.cache
def _fullest_mean_window(charges: tuple[int, ...], limit: int) -> float:
    sets = _fitting_sets(charges, limit)
    best = 0.0
    for size in range(1, len(charges) + 1):
        for mix in itertools.combinations(sets, size):
            weights = _equal_count_weights(mix)
            if weights is not None:
                held = sum(
                    w * sum(c * n for c, n in zip(charges, counts, strict=True))
                    for w, counts in zip(weights, mix, strict=True)
                )
                best = max(best, held / limit)
    return best


def fullest_repeating_window(charges: list[int], limit: int) -> float:
    """The largest share of ``limit`` a window holds whose mix of calls repeats window after
    window: as many whole conversations (one call of each of ``charges``) as fit."""
    conversation = sum(charges)
    return limit // conversation * conversation / limit


def _fitting_sets(charges: tuple[int, ...], limit: int) -> list[tuple[int, ...]]:
    """Counts of each call that fit ``limit`` together (at least one call)."""
    ranges = [range(limit // c + 1) for c in charges]
    return [
        counts
        for counts in itertools.product(*ranges)
        if any(counts) and sum(c * n for c, n in zip(charges, counts, strict=True)) <= limit
    ]


def _equal_count_weights(mix: tuple[tuple[int, ...], ...]) -> list[float] | None:
    """Non-negative weights summing to one under which every call's mean count is equal;
    None when there are none (or not exactly one solution)."""
    k = len(mix)
    rows = [[1.0] * k] + [[float(m[i] - m[0]) for m in mix] for i in range(1, len(mix[0]))]
    rhs = [1.0] + [0.0] * (len(rows) - 1)
    solution = _solve(rows[:k], rhs[:k]) if len(rows) >= k else None
    if solution is None or any(w < -1e-9 for w in solution):
        return None
    if any(
        abs(sum(r * w for r, w in zip(row, solution, strict=True)) - b) > 1e-6
        for row, b in zip(rows, rhs, strict=True)
    ):
        return None
    return solution


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    n = len(rows)
    a = [[*row, b] for row, b in zip(rows, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] for i in range(n)]
