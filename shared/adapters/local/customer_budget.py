"""The per-customer daily token budget (``shared.llm.budget.CustomerBudget``) in a SQLite
file shared by devhost's worker processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shared.adapters.local.sqlite_file import SqliteFile

_BUDGET_SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_budget (
    customer TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (customer, day)
);
"""


class SqliteCustomerBudget:
    """Spend in a SQLite file shared by devhost's worker processes (one atomic UPSERT per add)."""

    def __init__(self, path: str | Path, *, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._file = SqliteFile(path, schema=_BUDGET_SCHEMA)

    async def used(self, customer_id: str, day: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT tokens FROM customer_budget WHERE customer = ? AND day = ?",
                (customer_id, day),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._file.run(op)

    async def add(self, customer_id: str, day: str, tokens: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "INSERT INTO customer_budget (customer, day, tokens) VALUES (?, ?, ?)"
                " ON CONFLICT (customer, day) DO UPDATE SET tokens = tokens + excluded.tokens"
                " RETURNING tokens",
                (customer_id, day, tokens),
            ).fetchone()
            return int(row[0])

        return await self._file.run(op)

    async def close(self) -> None:
        await self._file.close()
