"""The limiter's state on its way to ``devhost status``: published by each worker's share
coordinator to the SQLite quota ledger, read by the host, rendered as one line per deployment."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from devhost.quota_status import quota_lines, read_quota_status, read_store_quota_status
from shared.adapters.document_quota import StoreQuotaLedger
from shared.adapters.local.quota_ledger import SqliteQuotaLedger
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.domain.messages import Priority
from shared.llm.accounting import CallSize
from shared.llm.ledger import STATUS_KEEP_S, ShareCoordinator
from shared.llm.limiter import QuotaLimiter
from tests.support.clock import ManualClock

TPM = 60_000
"""10,000 tokens and 60 requests per 10 s under Azure's model ("Manage Azure OpenAI Service
quota", https://learn.microsoft.com/azure/ai-services/openai/how-to/quota): 6 RPM per 1,000 TPM,
and the rates judged over short periods (1 or 10 s), not over the whole minute."""


def busy_limiter(clock: ManualClock, *, interactive: int, batch: int) -> QuotaLimiter:
    """A limiter with ``interactive`` and ``batch`` calls of 300 tokens sent just now."""
    limiter = QuotaLimiter({"d": TPM})
    quota = limiter.quota("d")
    for lane, count in ((Priority.INTERACTIVE, interactive), (Priority.BATCH, batch)):
        for _ in range(count):
            now = clock.monotonic()
            reservation = quota.reserve(CallSize(100, 200), quota.plan(300, now, lane), lane)
            quota.mark_sent(reservation, now)
    return limiter


async def test_each_worker_publishes_its_snapshot_and_leaving_removes_it(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "quota.sqlite3"
    limiters = {
        "a": busy_limiter(clock, interactive=3, batch=1),
        "b": busy_limiter(clock, interactive=0, batch=2),
    }
    coordinators = {
        name: ShareCoordinator(SqliteQuotaLedger(path), limiter, instance_id=name, clock=clock)
        for name, limiter in limiters.items()
    }
    for coordinator in coordinators.values():
        coordinator.note_demand("d", 1_000)
        await coordinator.refresh("d")

    status = read_quota_status(path, now=clock.time())

    by_instance = {entry["instance"]: entry for entry in status["d"]}
    assert set(by_instance) == {"a", "b"}
    assert by_instance["a"]["tokens_used"] == 4 * 300
    assert by_instance["a"]["lanes"]["batch"]["tokens_used"] == 300
    assert by_instance["b"]["lanes"]["batch"]["tokens_used"] == 600
    assert by_instance["a"]["accounting"] == "prompt+max/10s"
    assert by_instance["a"]["throttles"] == 0

    await coordinators["a"].close()
    assert [e["instance"] for e in read_quota_status(path, now=clock.time())["d"]] == ["b"]
    await coordinators["b"].close()


def test_the_status_line_sums_the_instances_of_a_deployment() -> None:
    clock = ManualClock()
    a = busy_limiter(clock, interactive=3, batch=1)
    b = busy_limiter(clock, interactive=1, batch=0)
    for limiter, share in ((a, 0.75), (b, 0.25)):
        limiter.quota("d").set_share(share)
    b.quota("d").throttle(0.5, clock.monotonic())
    now = clock.monotonic()
    state = {
        "quota": {
            "d": [
                {**snapshot.to_dict(), "instance": name, "age_s": age}
                for name, age, limiter in (("a", 2.0, a), ("b", 4.5, b))
                for snapshot in limiter.snapshots(now)
            ]
        }
    }

    (line,) = quota_lines(state)

    # 5 calls of 300 tokens against 7,500 + 2,500 tokens per 10 s; 5 of 45 + 15 requests.
    assert line == (
        "d: accounting prompt+max/10s (learning, 0 answers); tokens 1,500 / 10,000 per 10s"
        " (15%; the deployment's 10,000); requests 5 / 60; lanes: batch 300, interactive 1,200;"
        " 429s 1; 2 instance(s), as of 4s ago"
    )


def test_status_without_quota_or_with_a_malformed_row_shows_what_it_can() -> None:
    clock = ManualClock()
    (good,) = busy_limiter(clock, interactive=1, batch=0).snapshots(clock.monotonic())
    state = {"quota": {"d": [{"deployment": "d"}, good.to_dict()], "e": [{"nonsense": 1}]}}
    (line,) = quota_lines(state)
    assert line.startswith("d: accounting prompt+max/10s")
    assert "1 instance(s)" in line
    assert quota_lines({"functions": {}}) == []
    assert quota_lines(None) == []


def test_reading_a_ledger_no_worker_wrote_is_empty_and_old_rows_are_left_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "quota.sqlite3"
    assert read_quota_status(path, now=1_000.0) == {}
    sqlite3.connect(path).close()  # the file exists, its tables do not yet
    assert read_quota_status(path, now=1_000.0) == {}
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE quota_status (deployment, instance, at, snapshot)")
    conn.executemany(
        "INSERT INTO quota_status VALUES (?, ?, ?, ?)",
        [
            ("d", "old", 1_000.0 - STATUS_KEEP_S - 1, json.dumps({"x": 1})),
            ("d", "torn", 999.0, "{not json"),
            ("d", "fresh", 990.0, json.dumps({"x": 2})),
        ],
    )
    conn.commit()
    conn.close()
    assert read_quota_status(path, now=1_000.0) == {
        "d": [{"x": 2, "instance": "fresh", "age_s": 10.0}]
    }


async def test_the_store_ledger_keeps_the_snapshots_in_the_quota_container(
    tmp_path: Path,
) -> None:
    """The same board over the document store (Cosmos DB in Azure, SQLite here): one
    ``status:{deployment}:{instance}`` document each, hidden once the instance leaves."""
    clock = ManualClock()
    store = SqliteDocumentStore(str(tmp_path / "store.sqlite3"), partition_keys={"quota": "/id"})
    limiter = busy_limiter(clock, interactive=2, batch=1)
    coordinator = ShareCoordinator(StoreQuotaLedger(store), limiter, instance_id="a", clock=clock)
    try:
        coordinator.note_demand("d", 1_000)
        await coordinator.refresh("d")
        status = await read_store_quota_status(store, now=clock.time() + 2.0)
        (entry,) = status["d"]
        assert entry["instance"] == "a"
        assert entry["age_s"] == 2.0
        assert entry["tokens_used"] == 3 * 300
        assert entry["lanes"]["batch"]["tokens_used"] == 300
        await coordinator.close()
        assert await read_store_quota_status(store, now=clock.time()) == {}
    finally:
        await store.close()
