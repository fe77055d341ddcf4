"""One SQLite file shared by devhost's worker processes, driven from asyncio.

The blocking sqlite3 calls run on one dedicated thread that owns the connection: a write can wait
for another process's lock (up to the busy timeout) and must not stall the event loop meanwhile.
WAL journaling lets readers run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from shared.adapters.local.sqlite import open_wal
from shared.adapters.local.sqlite import transaction as transaction
from shared.errors import TransientError

_T = TypeVar("_T")

BUSY_TIMEOUT_S = 10.0


class SqliteFile:
    """Runs functions of a connection on the file's own thread; the schema is made on first use."""

    def __init__(self, path: str | Path, *, schema: str) -> None:
        self.path = str(path)
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``op`` with the connection; a locked or unreadable file is a ``TransientError``."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, op)
        except sqlite3.OperationalError as exc:
            raise TransientError(f"{Path(self.path).name} unavailable: {exc}") from None

    def _call(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            self._conn = open_wal(self.path, busy_timeout_s=BUSY_TIMEOUT_S, schema=self._schema)
        return op(self._conn)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the connection and stop the thread; the object may be used again afterwards."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        executor.shutdown(wait=True)
