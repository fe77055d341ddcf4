"""The capacity model checked against measured benchmark runs (``bench.capacity``'s part 2).

For each guarded cell of a ``bench.quota`` table, goodput from first principles and from the
cell replayed in simulated time (``bench.quota_sim``), and the replay's P95 over the
conversations that finish inside the cell's window; for each row of a ``bench.quota --lanes``
table, the replay's interactive P95 alone and beside batch, and what batch takes of the room
interactive leaves. Each is printed beside the measurement, as prediction / measurement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.quota import Row, packing, quota_bound
from bench.quota_lanes import LANES_WARMUP_S, STRAY_SETTLE_S, LaneRun, lane_figures
from bench.quota_load import (
    ARRIVAL_PROFILES,
    Tally,
    around,
    cell_bound,
    loop_bound,
    stray_per_call,
)
from bench.quota_sim import CellSpec, simulate, simulate_lanes
from bench.stats import percentile
from devhost.simulator.accounting import AccountingProfile
from shared.domain.messages import Priority
from shared.llm.lanes import BATCH, INTERACTIVE


@dataclass(frozen=True)
class Cell:
    profile: AccountingProfile
    tpm: int
    users: int
    client: str
    goodput: float
    p95: float | None
    warmup_s: float
    measure_s: float
    conversations: int
    """Conversations completed inside the window: what the P95 was taken over."""


ROW = re.compile(r"^\s*(\S+)\s*\|\s*([\d,]+)\s*\|\s*(\d+)\s*\|\s*(\w+)\s*\|\s*([\d.]+)\s*\|")
PLAN = re.compile(r"^-- .*: warm-up ([\d.]+)s, window ([\d.]+)s")


def read_quota_table(path: Path) -> list[Cell]:
    """The rows of a ``bench.quota`` output (its printed table)."""
    cells = []
    columns: list[str] = []
    warmup_s, measure_s = 0.0, 0.0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("profile "):
            columns = [p.strip() for p in line.split("|")]
        if plan := PLAN.match(line):
            warmup_s, measure_s = float(plan.group(1)), float(plan.group(2))
        match = ROW.match(line)
        if not match or match.group(1) not in ARRIVAL_PROFILES or not columns:
            # A profile that charges usage has no charge the model can know before an answer.
            continue
        parts = dict(zip(columns, (p.strip() for p in line.split("|")), strict=False))
        p95 = parts["P95 s"]
        cells.append(
            Cell(
                ARRIVAL_PROFILES[match.group(1)],
                int(match.group(2).replace(",", "")),
                int(match.group(3)),
                match.group(4),
                float(match.group(5)),
                float(p95) if p95 not in ("-", "") else None,
                warmup_s,
                measure_s,
                round(float(parts["conv/s"]) * measure_s),
            )
        )
    return cells


def predict(cell: Cell) -> float:
    """The goodput the model predicts from first principles for a guarded cell."""
    bound, by = quota_bound(cell.profile, cell.tpm)
    return min(loop_bound(cell.users), bound * packing(cell.profile, cell.tpm, by))


@dataclass(frozen=True)
class Queued:
    goodput: float
    p95: float | None
    conversations: float
    """Completed inside the window, per seed."""


def queue(cell: Cell, seeds: int) -> Queued:
    """Goodput and P95 of the cell replayed in simulated time (``bench.quota_sim``): goodput
    as ``bench.quota`` measures it, the mean over ``seeds``; the P95 over every seed's
    conversations completed inside the window."""
    bound, by = cell_bound(cell.profile, cell.tpm, cell.users)
    goodputs, latencies = [], []
    for seed in range(1, seeds + 1):
        spec = CellSpec(
            cell.profile, cell.tpm, cell.users, cell.warmup_s, cell.measure_s, seed=seed
        )
        tally = simulate(spec)
        row = Row(cell.tpm, cell.users, "guarded", tally, bound, cell.measure_s, cell.profile, by)
        goodputs.append(row.goodput)
        latencies.extend(tally.latencies)
    p95 = percentile(latencies, 0.95) if latencies else None
    return Queued(sum(goodputs) / seeds, p95, len(latencies) / seeds)


def print_checks(cells: list[Cell], seeds: int) -> None:
    print(
        "model vs bench.quota (guarded rows): 'first principles': goodput = min(users/(3 x "
        f"latency), bound x packing); 'queue': the cell replayed in simulated time over {seeds} "
        "seeds (bench.quota_sim), goodput and P95 of the conversations completed inside the "
        "window, as the cell counts them; n: those conversations, measured and per seed"
    )
    print(
        "profile          |     TPM | users | good/s meas | first | /meas | queue | /meas "
        "| P95 meas |   n | queue |   n | /meas"
    )
    for cell in cells:
        if cell.client != "guarded":
            continue
        first = predict(cell)
        queued = queue(cell, seeds)
        p95_meas = f"{cell.p95:8.1f}" if cell.p95 is not None else "       -"
        p95_pred = f"{queued.p95:5.1f}" if queued.p95 is not None else "    -"
        ratio = f"{queued.p95 / cell.p95:5.2f}" if queued.p95 and cell.p95 else "    -"
        print(
            f"{cell.profile.name:<16} | {cell.tpm:>7,} | {cell.users:>5} | {cell.goodput:11.3f} "
            f"| {first:5.3f} | {first / cell.goodput:5.2f} | {queued.goodput:5.3f} "
            f"| {queued.goodput / cell.goodput:5.2f} | {p95_meas} | {cell.conversations:>3} "
            f"| {p95_pred} | {queued.conversations:3.0f} | {ratio}"
        )


LANES_PLAN = re.compile(
    r"^lanes: (\d+) interactive users \(think time uniform in \[0, ([\d.]+)\] s\) alone, "
    r"then with (\d+) batch-lane workers.*window ([\d.]+)s"
)
LANES_ROW = re.compile(r"^\s*(\S+)\s*\|\s*([\d,]+)\s*\|" + r"\s*([\d.]+)\s*\|" * 7)


@dataclass(frozen=True)
class LanesCell:
    """One row of ``bench.quota --lanes``: interactive users alone, then beside batch."""

    profile: AccountingProfile
    tpm: int
    users: int
    think_s: float
    batch_users: int
    measure_s: float
    p95_alone: float
    p95_both: float
    batch_share: float
    """What batch took of the room interactive left (batch / remaining)."""


def _plan_rows(
    path: Path, plan_line: re.Pattern[str], row_line: re.Pattern[str]
) -> Iterator[tuple[re.Match[str], re.Match[str]]]:
    """Each row of a printed scenario table (``row_line``; the profile in its first group)
    with the plan line above it, for the profiles the replay takes (``ARRIVAL_PROFILES``: a
    usage charge is not known before the answer)."""
    plan: re.Match[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        plan = plan_line.match(line) or plan
        row = row_line.match(line)
        if plan is not None and row is not None and row.group(1) in ARRIVAL_PROFILES:
            yield plan, row


def read_lanes_table(path: Path) -> list[LanesCell]:
    """The rows of a ``bench.quota --lanes`` output."""
    cells = []
    for plan, row in _plan_rows(path, LANES_PLAN, LANES_ROW):
        figures = [float(row.group(i)) for i in range(3, 10)]
        cells.append(
            LanesCell(
                ARRIVAL_PROFILES[row.group(1)],
                int(row.group(2).replace(",", "")),
                int(plan.group(1)),
                float(plan.group(2)) / 2.0,
                int(plan.group(3)),
                float(plan.group(4)),
                figures[0],
                figures[1],
                figures[6],
            )
        )
    return cells


def queue_lanes(cell: LanesCell, seeds: int) -> tuple[float, float, float]:
    """(interactive P95 alone, beside batch, batch / remaining) of the lanes cell replayed in
    simulated time, over ``seeds`` seeds pooled: the P95s over every seed's conversations,
    the rates over every seed's window."""
    runs = []
    for batch_users in (0, cell.batch_users):
        pooled: dict[Priority, Tally] = {}
        for seed in range(1, seeds + 1):
            spec = CellSpec(
                cell.profile,
                cell.tpm,
                cell.users,
                LANES_WARMUP_S,
                cell.measure_s,
                seed=seed,
                think_s=cell.think_s,
                batch_users=batch_users,
            )
            for lane, tally in simulate_lanes(spec).items():
                pooled[lane] = _pool(pooled.get(lane), tally)
        runs.append(pooled)
    alone, both = runs
    figures = lane_figures(
        cell.profile,
        cell.tpm,
        LaneRun(alone[INTERACTIVE], None),
        LaneRun(both[INTERACTIVE], both[BATCH]),
        cell.measure_s * seeds,
    )
    return figures.p95_alone, figures.p95_both, figures.batch_share


def _pool(into: Tally | None, tally: Tally) -> Tally:
    if into is None:
        return tally
    into.latencies.extend(tally.latencies)
    into.useful_tokens += tally.useful_tokens
    into.useful_calls += tally.useful_calls
    into.conversations_failed += tally.conversations_failed
    into.http_calls += tally.http_calls
    into.throttled += tally.throttled
    return into


def print_lane_checks(cells: list[LanesCell], seeds: int) -> None:
    print(
        "model vs bench.quota --lanes: each row replayed in simulated time (bench.quota_sim, "
        f"{seeds} seeds): interactive users alone, then beside the batch workers"
    )
    print(
        "profile          |     TPM | int P95 alone meas | queue | /meas | w/ batch meas "
        "| queue | /meas | batch/remaining meas | queue | /meas"
    )
    for cell in cells:
        alone, both, share = queue_lanes(cell, seeds)
        print(
            f"{cell.profile.name:<16} | {cell.tpm:>7,} | {cell.p95_alone:18.2f} | {alone:5.2f} "
            f"| {alone / cell.p95_alone:5.2f} | {cell.p95_both:13.2f} | {both:5.2f} "
            f"| {both / cell.p95_both:5.2f} | {cell.batch_share:20.2f} | {share:5.2f} "
            f"| {share / cell.batch_share:5.2f}"
        )


STRAY_PLAN = re.compile(r"^stray 429: guarded, (\d+) users; .* in the ([\d.]+)s before")
STRAY_ROW = re.compile(r"^\s*(\S+)\s*\|\s*([\d,]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)")


@dataclass(frozen=True)
class StrayCell:
    """One row of ``bench.quota --stray``: charged tokens (or calls, where the request windows
    bind) per second before and after one forced 429."""

    profile: AccountingProfile
    tpm: int
    users: int
    span_s: float
    ratio: float
    """After over before, as measured."""


def read_stray_table(path: Path) -> list[StrayCell]:
    """The rows of a ``bench.quota --stray`` output."""
    cells = []
    for plan, row in _plan_rows(path, STRAY_PLAN, STRAY_ROW):
        cells.append(
            StrayCell(
                ARRIVAL_PROFILES[row.group(1)],
                int(row.group(2).replace(",", "")),
                int(plan.group(1)),
                float(plan.group(2)),
                float(row.group(5)),
            )
        )
    return cells


def queue_stray(cell: StrayCell, seeds: int) -> float:
    """After over before of the cell replayed in simulated time with its forced 429 (the
    bench's own timing: the fault comes ``span_s`` + 15 s in), pooled over ``seeds``; in the
    bench's unit (``stray_per_call``)."""
    inject = cell.span_s + STRAY_SETTLE_S
    per_call = stray_per_call(cell.profile, cell.tpm)
    before = after = 0.0
    for seed in range(1, seeds + 1):
        spec = CellSpec(
            cell.profile, cell.tpm, cell.users, inject, cell.span_s, seed=seed, fault_at=inject
        )
        one_before, one_after = around(simulate(spec), inject, cell.span_s, per_call=per_call)
        before, after = before + one_before, after + one_after
    return after / before if before else math.nan


def print_stray_checks(cells: list[StrayCell], seeds: int) -> None:
    print(
        "model vs bench.quota --stray: each row replayed in simulated time (bench.quota_sim, "
        f"{seeds} seeds) with the same forced 429; charged tokens/s (calls/s where the request "
        "windows bind) after it over before"
    )
    print("profile          |     TPM | users | after/before meas | queue | /meas")
    for cell in cells:
        replayed = queue_stray(cell, seeds)
        print(
            f"{cell.profile.name:<16} | {cell.tpm:>7,} | {cell.users:>5} | {cell.ratio:17.3f} "
            f"| {replayed:5.3f} | {replayed / cell.ratio:5.2f}"
        )
