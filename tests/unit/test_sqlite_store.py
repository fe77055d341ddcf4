"""The SQLite store beyond the shared contract: durability settings, processes, bad input."""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.errors import ConfigError, InvalidInput, PreconditionFailed, TransientError

REPO_ROOT = Path(__file__).resolve().parents[2]
COUNTERS = {"counters": "/id"}

# Each worker process increments one counter document ROUNDS times by read-modify-replace with
# the etag, retrying on PreconditionFailed, and prints how many conflicts it met.
WORKER = """
import asyncio, pathlib, sys, time
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.errors import PreconditionFailed

async def main(path, rounds, go_file, ready_file):
    store = SqliteDocumentStore(path, partition_keys={"counters": "/id"})
    await store.ping()
    pathlib.Path(ready_file).touch()
    while not pathlib.Path(go_file).exists():
        time.sleep(0.005)
    conflicts = 0
    try:
        for _ in range(rounds):
            while True:
                doc = await store.read("counters", "c", partition_key="c")
                try:
                    await store.replace(
                        "counters", {**doc, "count": doc["count"] + 1}, etag=doc["_etag"]
                    )
                    break
                except PreconditionFailed:
                    conflicts += 1
    finally:
        await store.close()
    print(conflicts)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteDocumentStore]:
    made = SqliteDocumentStore(str(tmp_path / "store.sqlite3"), partition_keys=COUNTERS)
    yield made
    await made.close()


async def test_two_processes_incrementing_one_document_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    seed = SqliteDocumentStore(path, partition_keys=COUNTERS)
    await seed.create("counters", {"id": "c", "count": 0})
    rounds = 150
    go_file = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            path,
            str(rounds),
            str(go_file),
            str(tmp_path / f"ready-{n}"),
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    # Both workers have opened the store before either starts, so their writes overlap.
    for _ in range(600):
        if all((tmp_path / f"ready-{n}").exists() for n in range(2)):
            break
        await asyncio.sleep(0.01)
    go_file.touch()
    outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 60)

    final = await seed.read("counters", "c", partition_key="c")
    await seed.close()
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
    assert final is not None
    assert final["count"] == 2 * rounds


async def test_the_file_uses_wal_and_full_synchronous_writes(
    store: SqliteDocumentStore, tmp_path: Path
) -> None:
    await store.ping()

    with sqlite3.connect(tmp_path / "store.sqlite3") as probe:
        journal = probe.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = await store._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])

    assert journal == "wal"
    assert synchronous == 2  # FULL


async def test_etags_are_quoted_opaque_strings_that_change_on_every_write(
    store: SqliteDocumentStore,
) -> None:
    etags = [(await store.upsert("counters", {"id": "c", "count": n}))["_etag"] for n in range(3)]

    assert len(set(etags)) == 3
    assert all(etag.startswith('"') and etag.endswith('"') and len(etag) > 2 for etag in etags)


async def test_only_one_of_many_concurrent_replaces_from_one_version_wins(
    store: SqliteDocumentStore,
) -> None:
    doc = await store.create("counters", {"id": "c", "owner": "nobody"})

    results = await asyncio.gather(
        *(
            store.replace("counters", {**doc, "owner": f"w{n}"}, etag=doc["_etag"])
            for n in range(8)
        ),
        return_exceptions=True,
    )

    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1
    assert all(isinstance(r, PreconditionFailed) for r in results if not isinstance(r, dict))
    final = await store.read("counters", "c", partition_key="c")
    assert final is not None
    assert final["owner"] == winners[0]["owner"]


async def test_writes_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nested" / "dir" / "store.sqlite3")
    first = SqliteDocumentStore(path, partition_keys=COUNTERS)
    written = await first.create("counters", {"id": "c", "count": 41})
    await first.close()

    second = SqliteDocumentStore(path, partition_keys=COUNTERS)
    read = await second.read("counters", "c", partition_key="c")
    await second.close()

    assert read == written


async def test_a_write_blocked_past_the_busy_timeout_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteDocumentStore(str(path), partition_keys=COUNTERS, busy_timeout_s=0.2)
    await store.ping()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(TransientError):
            await store.upsert("counters", {"id": "c", "count": 1})
        blocker.execute("ROLLBACK")
        written = await store.upsert("counters", {"id": "c", "count": 1})
    finally:
        blocker.close()
        await store.close()

    assert written["count"] == 1


@pytest.mark.parametrize(
    "bad_doc",
    [
        {"id": "c", "count": math.nan},
        {"id": "c", "tags": {"a", "b"}},
        {"id": "c", "when": object()},
    ],
    ids=["nan", "set", "object"],
)
async def test_documents_that_are_not_json_are_refused_and_nothing_is_written(
    store: SqliteDocumentStore, bad_doc: dict[str, object]
) -> None:
    with pytest.raises(InvalidInput):
        await store.upsert("counters", bad_doc)

    assert await store.read("counters", "c", partition_key="c") is None


async def test_the_callers_document_is_not_modified(store: SqliteDocumentStore) -> None:
    doc = {"id": "c", "count": 1, "_etag": '"old"'}

    await store.upsert("counters", doc)

    assert doc == {"id": "c", "count": 1, "_etag": '"old"'}


@pytest.mark.parametrize("value", [None, math.inf, [1], {"a": 1}])
async def test_query_values_that_cannot_be_compared_are_refused(
    store: SqliteDocumentStore, value: object
) -> None:
    with pytest.raises(InvalidInput):
        await store.query_eq("counters", "count", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1, 10_001])
async def test_query_limits_outside_the_allowed_range_are_refused(
    store: SqliteDocumentStore, limit: int
) -> None:
    with pytest.raises(InvalidInput):
        await store.query_eq("counters", "count", 1, limit=limit)


async def test_a_closed_store_refuses_further_calls(store: SqliteDocumentStore) -> None:
    await store.ping()
    await store.close()

    with pytest.raises(RuntimeError, match="closed"):
        await store.ping()


@pytest.mark.parametrize("partition_keys", [{}, {"c": "id"}, {"c": "/"}, {"c": "/a-b"}])
def test_malformed_partition_key_maps_are_configuration_errors(
    partition_keys: dict[str, str],
) -> None:
    with pytest.raises(ConfigError):
        SqliteDocumentStore("unused.sqlite3", partition_keys=partition_keys)


async def test_latest_lists_newest_first_and_filters_with_typed_equality(
    store: SqliteDocumentStore,
) -> None:
    for n, count in enumerate([1, "1", True, 1.0]):
        await store.create("counters", {"id": f"c{n}", "count": count})
    newest = await store.latest("counters", limit=3)
    assert [d["id"] for d in newest] == ["c3", "c2", "c1"]
    ones = await store.latest("counters", where=("count", 1))
    assert [d["id"] for d in ones] == ["c3", "c0"]  # 1 equals 1.0, never "1" or true
    assert [d["id"] for d in await store.latest("counters", where=("count", "1"))] == ["c1"]
    with pytest.raises(InvalidInput):
        await store.latest("counters", where=("count; DROP", 1))


async def test_reads_by_time_use_the_time_index_not_a_scan(tmp_path: Path) -> None:
    """SQLite's own planner is the oracle: the statements ``latest`` and ``changed_since``
    really run (caught by the connection's trace callback) search ``documents_by_time`` instead
    of scanning every document (a 10,000-conversation dashboard list read them all before)."""
    path = tmp_path / "store.sqlite3"
    store = SqliteDocumentStore(str(path), partition_keys={"conversations": "/conversationId"})
    await store.upsert("conversations", {"id": "c-1", "conversationId": "c-1"})
    statements: list[str] = []
    await store._run(lambda conn: conn.set_trace_callback(statements.append))
    assert [d["id"] for d in await store.latest("conversations")] == ["c-1"]
    assert [d["id"] for d in await store.changed_since("conversations", 0)] == ["c-1"]
    await store._run(lambda conn: conn.set_trace_callback(None))
    await store.close()
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2, statements
    conn = sqlite3.connect(path)
    try:
        for statement in reads:
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}"))
            assert "documents_by_time" in plan, (statement, plan)
    finally:
        conn.close()
