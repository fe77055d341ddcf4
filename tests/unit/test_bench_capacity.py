"""The capacity model's check against a ``bench.quota`` table: rows are read with the cell they
ran in and the conversations their P95 was taken over, and the P95 is predicted as the cell
measures it: over the conversations that finish inside the window, not as users / goodput."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity_check import (
    predict,
    print_checks,
    print_lane_checks,
    print_stray_checks,
    queue,
    queue_lanes,
    queue_stray,
    read_lanes_table,
    read_quota_table,
    read_stray_table,
)

HEADER = (
    "profile | TPM | users | client | good/s | whole | bound | by | pack | ideal | ratio"
    " | conv/s | 429/call | calls | fail | P50 s | P95 s | N/X s | resched"
)


def row(users: int, client: str, goodput: float, p95: float) -> str:
    """A ``bench.quota`` row at 10,000 TPM under Azure's accounting (the figures the check
    does not read are placeholders)."""
    head = f"azure | 10,000 | {users} | {client} | {goodput} | 1.00 | 0.214 | tpm"
    return head + f" | 0.91 | 0.97 | 0.92 | 0.2 | 0.00% | 22 | 0 | 10.0 | {p95} | 50.0 | 0"


TABLE = "\n".join(
    [
        HEADER,
        "-- azure, 10,000 TPM: warm-up 12s, window 35s",
        row(3, "guarded", 0.188, 27.0),
        row(200, "guarded", 0.197, 40.7),
        row(200, "naive", 0.064, 8.7),
    ]
)


def test_rows_carry_their_goodput_p95_cell_and_conversation_count(tmp_path: Path) -> None:
    path = tmp_path / "quota.txt"
    path.write_text(TABLE, encoding="utf-8")
    cells = read_quota_table(path)
    assert [(c.users, c.client, c.goodput, c.p95) for c in cells] == [
        (3, "guarded", 0.188, 27.0),
        (200, "guarded", 0.197, 40.7),
        (200, "naive", 0.064, 8.7),
    ]
    assert {(c.warmup_s, c.measure_s, c.conversations) for c in cells} == {(12.0, 35.0, 7)}
    # 10,000 TPM / 780 tokens per conversation / 60, times FIFO packing of whole calls.
    assert predict(cells[0]) == pytest.approx(0.195, abs=0.001)


def test_the_queue_predicts_the_p95_the_cell_can_see(tmp_path: Path) -> None:
    """200 users at 10,000 TPM: users / goodput is over 1,000 s, but a 47 s cell sees only the
    conversations that finish inside it, and the queue counts those alone; the goodput is the
    quota's, within the packing of whole calls."""
    path = tmp_path / "quota.txt"
    path.write_text(TABLE, encoding="utf-8")
    crowded = read_quota_table(path)[1]
    queued = queue(crowded, seeds=2)
    assert crowded.users / queued.goodput > 1_000
    assert queued.p95 is not None
    assert queued.p95 <= crowded.warmup_s + crowded.measure_s
    assert 0.85 * 0.214 <= queued.goodput <= 0.214


def test_only_guarded_rows_are_checked_with_both_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "quota.txt"
    path.write_text(TABLE, encoding="utf-8")
    cells = read_quota_table(path)
    print_checks(cells, seeds=1)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("azure")]
    assert len(rows) == 2  # guarded rows only
    first = [p.strip() for p in rows[0].split("|")]
    queued = queue(cells[0], seeds=1)
    assert queued.p95 is not None
    assert first[5] == f"{predict(cells[0]) / 0.188:.2f}"
    assert first[-1] == f"{queued.p95 / 27.0:.2f}"


LANES = """\
lanes: 10 interactive users (think time uniform in [0, 10] s) alone, then with 50 batch-lane \
workers (closed loop, no think time), one guarded client; window 60s
profile | TPM | int P95 alone | int P95 w/ batch | ratio | int good/s | batch good/s | remaining \
| batch/remaining | fail | 429/call
azure            | 210,000 |          0.93 |             0.97 |  1.04 |      1.700 |        1.700 \
|     2.787 |            0.61 |    0 |    0.00%
"""


def test_a_lanes_row_is_read_and_replayed_beside_its_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lanes.txt"
    path.write_text(LANES, encoding="utf-8")
    (cell,) = read_lanes_table(path)
    assert (cell.users, cell.think_s, cell.batch_users, cell.measure_s) == (10, 5.0, 50, 60.0)
    assert (cell.p95_alone, cell.p95_both, cell.batch_share) == (0.93, 0.97, 0.61)
    alone, both, share = queue_lanes(cell, seeds=1)
    assert alone == pytest.approx(0.9, abs=0.05)  # three 300 ms calls, nothing waits
    assert both >= alone
    assert 0.0 < share <= 1.0
    print_lane_checks([cell], seeds=1)
    row = [p.strip() for p in capsys.readouterr().out.splitlines()[-1].split("|")]
    assert row[-1] == f"{share / 0.61:.2f}"


STRAY = "\n".join(
    [  # the first rows of a `bench.quota --stray --stray-span-s 60` run, as it printed them
        "stray 429: guarded, 50 users; charged tokens/s in the 60s before and after one forced "
        "429 (x-sim-fault: 429)",
        "profile          |     TPM | before/s | after/s | after/before | 429s | calls",
        "azure            |  10,000 |    149.8 |   154.7 |        1.032 |    1 |    38",
        "usage-minute     |  10,000 |    159.1 |   159.7 |        1.004 |    1 |    44",
    ]
)


def test_a_stray_row_is_read_and_replayed_with_its_forced_429(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The row's cell and its measured after/before are read; a usage-charging profile's row
    is not (the replay cannot know its charge before the answer); the replay's after/before
    is printed beside the measured one."""
    path = tmp_path / "stray.txt"
    path.write_text(STRAY, encoding="utf-8")
    (cell,) = read_stray_table(path)
    assert (cell.profile.name, cell.tpm, cell.users, cell.span_s, cell.ratio) == (
        "azure",
        10_000,
        50,
        60.0,
        1.032,
    )
    replayed = queue_stray(cell, seeds=1)
    assert 0.9 <= replayed <= 1.1  # one forced 429 at saturation costs a few per cent at most
    print_stray_checks([cell], seeds=1)
    row = [p.strip() for p in capsys.readouterr().out.splitlines()[-1].split("|")]
    assert row[-2:] == [f"{replayed:.3f}", f"{replayed / 1.032:.2f}"]
