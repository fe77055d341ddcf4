"""The quota ledger (``shared.llm.ledger.QuotaLedger``) in a SQLite file shared by the worker
processes of one devhost: one UPSERT and SELECT per heartbeat, in a transaction.

It is also the status board of the workers' limiters (``shared.llm.ledger.QuotaStatusBoard``):
each instance's last ``QuotaSnapshot`` per deployment, which the devhost host reads with
``read_quota_status`` into ``state.json`` for ``devhost status``. A snapshot outlives its lease
(an idle worker renews none) until the instance leaves or it is
``shared.llm.ledger.STATUS_KEEP_S`` old.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.adapters.local.sqlite_file import SqliteFile, transaction
from shared.llm.ledger import STATUS_KEEP_S, Lease, status_entry

# Leases live three heartbeats: a file from an older build may still hold a table of another
# name and shape (``quota_lane_leases``), which nothing reads.
_LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_leases (
    deployment TEXT NOT NULL,
    instance TEXT NOT NULL,
    interactive REAL NOT NULL,
    batch REAL NOT NULL,
    used REAL NOT NULL,
    renewed REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (deployment, instance)
);
CREATE TABLE IF NOT EXISTS quota_status (
    deployment TEXT NOT NULL,
    instance TEXT NOT NULL,
    at REAL NOT NULL,
    snapshot TEXT NOT NULL,
    PRIMARY KEY (deployment, instance)
);
"""


class SqliteQuotaLedger:
    """Leases in a SQLite file shared by the worker processes of one devhost."""

    def __init__(self, path: str | Path) -> None:
        self._file = SqliteFile(path, schema=_LEASE_SCHEMA)

    async def heartbeat(
        self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
    ) -> dict[str, Lease]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, float, float, float, float]]:
            conn.execute(
                "INSERT INTO quota_leases"
                " (deployment, instance, interactive, batch, used, renewed, expires)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (deployment, instance)"
                " DO UPDATE SET interactive = excluded.interactive, batch = excluded.batch,"
                " used = excluded.used, renewed = excluded.renewed, expires = excluded.expires",
                (
                    deployment,
                    instance_id,
                    lease.interactive,
                    lease.batch,
                    lease.used,
                    now,
                    now + ttl_s,
                ),
            )
            conn.execute(
                "DELETE FROM quota_leases WHERE deployment = ? AND expires <= ?",
                (deployment, now),
            )
            rows: list[tuple[str, float, float, float, float]] = conn.execute(
                "SELECT instance, interactive, batch, used, renewed FROM quota_leases"
                " WHERE deployment = ?",
                (deployment,),
            ).fetchall()
            return rows

        rows = await self._file.run(lambda conn: transaction(conn, op))
        return {str(i): Lease(float(a), float(b), float(h), float(e)) for i, a, b, h, e in rows}

    async def leave(self, deployment: str, instance_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for table in ("quota_leases", "quota_status"):
                conn.execute(
                    f"DELETE FROM {table} WHERE deployment = ? AND instance = ?",
                    (deployment, instance_id),
                )

        await self._file.run(lambda conn: transaction(conn, op))

    async def publish(
        self, deployment: str, instance_id: str, snapshot: Mapping[str, Any], *, now: float
    ) -> None:
        """Keep ``snapshot`` (JSON values) as this instance's latest for ``deployment``."""
        text = json.dumps(snapshot, sort_keys=True)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO quota_status (deployment, instance, at, snapshot) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (deployment, instance)"
                " DO UPDATE SET at = excluded.at, snapshot = excluded.snapshot",
                (deployment, instance_id, now, text),
            )
            conn.execute("DELETE FROM quota_status WHERE at < ?", (now - STATUS_KEEP_S,))

        await self._file.run(lambda conn: transaction(conn, op))

    async def close(self) -> None:
        await self._file.close()


def read_quota_status(path: str | Path, *, now: float) -> dict[str, list[dict[str, Any]]]:
    """Per deployment, every instance's latest snapshot (its JSON values plus ``instance`` and
    ``age_s``), newest first; empty when no worker wrote the file yet. Read-only, no schema."""
    if not Path(path).exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        rows = conn.execute(
            "SELECT deployment, instance, at, snapshot FROM quota_status WHERE at >= ?"
            " ORDER BY deployment, at DESC",
            (now - STATUS_KEEP_S,),
        ).fetchall()
    except sqlite3.OperationalError:  # no worker has published yet: no table
        return {}
    finally:
        conn.close()
    found: dict[str, list[dict[str, Any]]] = {}
    for deployment, instance, at, text in rows:
        try:
            snapshot = dict(json.loads(text))
        except (ValueError, TypeError):
            continue  # a torn or foreign row: skip it rather than blank the status
        entry = status_entry(snapshot, instance, at=float(at), now=now)
        found.setdefault(str(deployment), []).append(entry)
    return found
