"""The demo's "where the time went" table: per stage, waiting to be picked up vs model calls."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from rich.table import Table

from shared.domain.conversation import Conversation
from shared.domain.messages import Stage
from shared.domain.timing import StageTiming, stage_timings


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the values at or below it.

    ``q`` is a fraction in [0, 1] (0.95 for P95); ``q = 0`` gives the minimum. NaN for no values.
    The benchmarks print theirs with this one too (``bench.stats``), so a P95 means one thing.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], not {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def per_stage(records: Iterable[Conversation]) -> dict[Stage, list[StageTiming]]:
    grouped: dict[Stage, list[StageTiming]] = {}
    for conversation in records:
        for timing in stage_timings(conversation):
            grouped.setdefault(timing.stage, []).append(timing)
    return grouped


def time_table(records: Iterable[Conversation]) -> Table:
    """Seconds per stage: waiting (ready → started), in model calls, and the rest of the
    agent's run (quota waits, failed attempts, prompt and parsing);
    P50 and P95 over every record of that stage, then the share of the total that was waiting."""
    table = Table(title="Where the time went, per stage (seconds, P50 / P95)")
    for column in (
        "stage",
        "runs",
        "waiting",
        "model calls",
        "quota, retries, code",
        "waiting share",
    ):
        table.add_column(column, justify="left" if column == "stage" else "right")
    grouped = per_stage(records)
    for stage in Stage:
        timings = grouped.get(stage)
        if not timings:
            continue
        waited = [t.waited_s for t in timings if t.waited_s is not None]
        model = [t.model_s for t in timings]
        other = [t.other_s for t in timings]
        total = sum(waited) + sum(model) + sum(other)
        table.add_row(
            stage.value,
            str(len(timings)),
            _pair(waited),
            _pair(model),
            _pair(other),
            f"{sum(waited) / total:.0%}" if total > 0 else "-",
        )
    return table


def _pair(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {percentile(values, 0.95):.2f}"
