"""Opening the SQLite files that several processes share: the store, the quota ledger, the
devhost broker and blob receipts.

Every file runs in WAL mode with ``synchronous=FULL``: a commit that has returned is in the
write-ahead log on disk and survives a killed process or a power cut, and readers never block the
writer. Switching a new file to WAL takes an exclusive lock for which SQLite does not always use
its busy handler, so processes opening the same new file at once retry that step themselves,
within the same busy budget as any other wait for a lock.

A file in a folder this process cannot write to (a read-only mount, another user's folder) is
opened read-only instead (:func:`open_read_only`), so that commands which only read still work
there. :func:`quick_check` tells whether a file is intact, and :func:`storage_problem` whether an
error means the file system refuses writes (full, read-only, no permission).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_REFUSED_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
)
_REFUSED_WRITE_TEXTS = (
    ("database or disk is full", "the disk is full"),
    ("readonly database", "the file is read-only"),
    ("disk i/o error", "a write to the disk failed (is it full?)"),
    ("unable to open database file", "the file cannot be opened for writing"),
)


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
        folder = Path(path).parent
        if folder.is_dir() and not can_write(path):
            return open_read_only(path, busy_timeout_s=busy_timeout_s)
        folder.mkdir(parents=True, exist_ok=True)
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


def can_write(path: str | Path) -> bool:
    """Whether this process may write the SQLite file ``path`` and create its ``-wal`` and
    ``-shm`` files beside it (a read-only mount answers no even to root)."""
    target = Path(path)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        return False
    return not target.exists() or os.access(target, os.W_OK)


def read_only_uri(path: str | Path) -> str:
    """The URI that opens ``path`` for reading without writing anything beside it.

    A WAL file is read through its ``-shm`` index: while that exists (a host is running, or
    stopped without cleaning up) ``mode=ro`` reads it, and so sees every committed write. Without
    it, and with no way to create it, the file is opened ``immutable``: a host that closed cleanly
    folded its log into the file, so nothing is missed; a leftover log (a crashed host) cannot be
    read without writing, and its last writes stay invisible (a warning says so).
    """
    target = Path(path).resolve()
    shm = Path(f"{target}-shm")
    wal = Path(f"{target}-wal")
    if shm.exists() or os.access(target.parent, os.W_OK | os.X_OK):
        return f"{target.as_uri()}?mode=ro"
    if wal.exists() and wal.stat().st_size > 0:
        log.warning(
            "%s has a write-ahead log that cannot be read without write access to %s; "
            "showing the state before its last writes",
            target,
            target.parent,
        )
    return f"{target.as_uri()}?mode=ro&immutable=1"


def open_read_only(path: str | Path, *, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A read-only connection (autocommit) to an existing file; any write on it fails with
    "attempt to write a readonly database"."""
    if not Path(path).exists():
        raise sqlite3.OperationalError(f"unable to open database file: {path} does not exist")
    return sqlite3.connect(
        read_only_uri(path),
        uri=True,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=False,
    )


def quick_check(path: str | Path, *, max_errors: int = 20) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong with the file (up to ``max_errors`` lines); an
    empty list when it is intact or does not exist. The file is opened read-only: checking it
    changes nothing. A file that is not a database at all is one problem too; a file that cannot
    be read raises ``sqlite3.OperationalError``."""
    if not Path(path).exists():
        return []
    conn = open_read_only(path)
    try:
        rows = conn.execute(f"PRAGMA quick_check({int(max_errors)})").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise  # the file could not be read (I/O, permissions): not a verdict on its pages
        return [str(exc)]
    finally:
        conn.close()
    problems = [str(row[0]) for row in rows]
    return [] if problems == ["ok"] else problems


def is_damage(exc: sqlite3.Error) -> bool:
    """True when SQLite says the file itself is damaged or is not a database."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def storage_problem(exc: BaseException, *, within: str | Path | None = None) -> str | None:
    """A few words on why the file system refused a write, when ``exc`` (or an exception it was
    raised from) says it did: disk full, read-only, no permission, I/O error. None for anything
    else (a busy file, a bug). With ``within``, an ``OSError`` counts only when it names a file
    in that folder (a program that cannot be executed is not a storage problem)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _REFUSED_WRITE_ERRNOS:
            name = os.fsdecode(current.filename) if current.filename is not None else ""
            inside = within is None or (
                name != "" and Path(name).resolve().is_relative_to(Path(within).resolve())
            )
            if inside:
                where = f" ({name})" if name else ""
                return f"{current.strerror or os.strerror(current.errno)}{where}"
        if isinstance(current, sqlite3.Error):
            text = str(current).lower()
            for needle, meaning in _REFUSED_WRITE_TEXTS:
                if needle in text:
                    return meaning
        current = current.__cause__ or current.__context__
    return None
