"""shared.adapters.local.sqlite's checks: quick_check verdicts, read-only opening, storage error
wording, and the store's write probe."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from shared.adapters.local.sqlite import (
    open_read_only,
    open_wal,
    quick_check,
    read_only_uri,
    storage_problem,
)
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.errors import TransientError

KEYS = {"conversations": "/conversationId"}


def _database(path: Path, rows: int = 400) -> None:
    conn = open_wal(path, busy_timeout_s=5, schema="CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"k{n:05d}", "v" * 200) for n in range(rows)])
    conn.close()


def test_quick_check_passes_an_intact_file_and_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    assert quick_check(path) == []
    assert not path.exists()  # checking made nothing
    _database(path)
    assert quick_check(path) == []


def test_quick_check_names_what_is_wrong_with_a_garbled_page(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _database(path)
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 3] = b"\x5a" * 4096  # page 3, a b-tree page of the table
    path.write_bytes(bytes(data))
    problems = quick_check(path)
    assert problems
    assert problems != ["ok"]


def test_a_file_that_is_no_database_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not SQLite" * 300)
    assert quick_check(path) == ["file is not a database"]


def test_read_only_uri_uses_immutable_only_when_nothing_can_be_written(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _database(path)
    assert read_only_uri(path).endswith("?mode=ro")  # the folder is writable
    conn = open_read_only(path)
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 400
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO t VALUES ('x', 'y')")
    finally:
        conn.close()
    with pytest.raises(sqlite3.OperationalError, match="does not exist"):
        open_read_only(tmp_path / "absent.sqlite3")


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "/x/host.lock"), "Read-only file system"),
        (sqlite3.OperationalError("database or disk is full"), "the disk is full"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "read-only"),
        (sqlite3.OperationalError("disk I/O error"), "is it full?"),
    ],
)
def test_storage_problem_recognises_refused_writes(error: BaseException, meaning: str) -> None:
    problem = storage_problem(error)
    assert problem is not None
    assert meaning in problem


def test_storage_problem_follows_the_cause_and_ignores_the_rest() -> None:
    outer = RuntimeError("broker database error")
    outer.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert storage_problem(outer) == "the disk is full"
    assert storage_problem(sqlite3.OperationalError("database is locked")) is None
    assert storage_problem(ValueError("a bug")) is None
    assert storage_problem(OSError(errno.ECONNREFUSED, "refused")) is None


async def test_the_store_probe_writes_a_row(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteDocumentStore(str(path), partition_keys=KEYS)
    try:
        await store.writable()
        await store.writable()
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT id FROM probe").fetchall() == [(1,)]
    finally:
        conn.close()


async def test_the_store_probe_fails_when_the_write_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteDocumentStore(str(path), partition_keys=KEYS)
    await store.ping()  # the file and its schema exist
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientError, match="busy"):
            await store.writable()
        # A plain read still answers: ping alone would have reported a healthy store.
        await store.ping()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()


def test_storage_problem_within_a_folder_counts_only_its_files(tmp_path: Path) -> None:
    inside = OSError(errno.EACCES, "Permission denied", str(tmp_path / "host.lock"))
    outside = PermissionError(errno.EACCES, "Permission denied", "/usr/bin/python3")
    assert storage_problem(inside, within=tmp_path) == (
        f"Permission denied ({tmp_path / 'host.lock'})"
    )
    assert storage_problem(outside, within=tmp_path) is None
    assert storage_problem(outside) is not None
