"""The capacity model's check against a ``bench.quota`` table: rows are read with the length
of the cell they ran in, and a P95 the cell could not have seen is marked, not compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity import predict, print_checks, read_quota_table

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


def test_rows_carry_their_goodput_p95_and_cell_length(tmp_path: Path) -> None:
    path = tmp_path / "quota.txt"
    path.write_text(TABLE, encoding="utf-8")
    cells = read_quota_table(path)
    assert [(c.users, c.client, c.goodput, c.p95, c.cell_s) for c in cells] == [
        (3, "guarded", 0.188, 27.0, 47.0),
        (200, "guarded", 0.197, 40.7, 47.0),
        (200, "naive", 0.064, 8.7, 47.0),
    ]
    # 10,000 TPM / 780 tokens per conversation / 60, times FIFO packing of whole calls.
    goodput, p95 = predict(cells[0])
    assert goodput == pytest.approx(0.195, abs=0.001)
    assert p95 == pytest.approx(3 / goodput)


def test_a_p95_longer_than_the_cell_is_censored_not_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "quota.txt"
    path.write_text(TABLE, encoding="utf-8")
    print_checks(read_quota_table(path))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("azure")]
    assert len(rows) == 2  # guarded rows only
    assert rows[0].endswith("0.57")  # 15.4 s predicted / 27.0 s measured
    assert rows[1].endswith("censored")  # 1,025 s predicted in a 47 s cell
