"""Opening the SQLite files that several processes share: the store, the quota ledger, the
devhost broker and blob receipts.

Every file runs in WAL mode with ``synchronous=FULL``: a commit that has returned is in the
write-ahead log on disk and survives a killed process or a power cut, and readers never block the
writer. Switching a new file to WAL takes an exclusive lock for which SQLite does not always use
its busy handler, so processes opening the same new file at once retry that step themselves,
within the same busy budget as any other wait for a lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def retry_while_busy(step: Callable[[], object], budget_s: float) -> None:
    """Run ``step``, retrying with a short backoff while the file is busy, for ``budget_s``."""
    deadline = time.monotonic() + budget_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def open_wal(path: str | Path, *, busy_timeout_s: float, schema: str = "") -> sqlite3.Connection:
    """A connection in autocommit mode (multi-statement work says ``BEGIN IMMEDIATE``) on a file
    in WAL mode with full sync, ``schema`` (idempotent DDL) applied; usable from any one thread.
    """
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        mode: list[object] = []
        retry_while_busy(
            lambda: mode.append(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]),
            busy_timeout_s,
        )
        if path != ":memory:" and str(mode[-1]).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot put {path} in WAL mode (got {mode[-1]!r})")
        conn.execute("PRAGMA synchronous = FULL")
        if schema:
            retry_while_busy(lambda: conn.executescript(schema), busy_timeout_s)
    except BaseException:
        conn.close()
        raise
    return conn


def transaction(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``op`` in one ``IMMEDIATE`` transaction (the write lock is taken up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = op(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
