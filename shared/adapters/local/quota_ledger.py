"""The quota ledger (``shared.llm.ledger.QuotaLedger``) in a SQLite file shared by the worker
processes of one devhost: one UPSERT and SELECT per heartbeat, in a transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shared.adapters.local.sqlite_file import SqliteFile, transaction

_LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_leases (
    deployment TEXT NOT NULL,
    instance TEXT NOT NULL,
    demand REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (deployment, instance)
);
"""


class SqliteQuotaLedger:
    """Leases in a SQLite file shared by the worker processes of one devhost."""

    def __init__(self, path: str | Path) -> None:
        self._file = SqliteFile(path, schema=_LEASE_SCHEMA)

    async def heartbeat(
        self, deployment: str, instance_id: str, demand_tpm: float, *, now: float, ttl_s: float
    ) -> dict[str, float]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            conn.execute(
                "INSERT INTO quota_leases (deployment, instance, demand, expires)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (deployment, instance)"
                " DO UPDATE SET demand = excluded.demand, expires = excluded.expires",
                (deployment, instance_id, demand_tpm, now + ttl_s),
            )
            conn.execute(
                "DELETE FROM quota_leases WHERE deployment = ? AND expires <= ?",
                (deployment, now),
            )
            rows: list[tuple[str, float]] = conn.execute(
                "SELECT instance, demand FROM quota_leases WHERE deployment = ?", (deployment,)
            ).fetchall()
            return rows

        rows = await self._file.run(lambda conn: transaction(conn, op))
        return {str(instance): float(demand) for instance, demand in rows}

    async def leave(self, deployment: str, instance_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM quota_leases WHERE deployment = ? AND instance = ?",
                (deployment, instance_id),
            )

        await self._file.run(op)

    async def close(self) -> None:
        await self._file.close()
