"""The local blob trigger: an inbox folder per container, polled; a blob version runs once.

A version is (name, size, mtime); its receipt is written after the function returns, so a crash
mid-invocation runs it again (at least once, like the Functions host), and a successful one is
never run twice. A blob that keeps failing is given up after ``MAX_ATTEMPTS`` with its reason,
as the host's poison queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from devhost.appmodel import FunctionSpec
from devhost.bindings import blob_stream
from shared.adapters.local.sqlite import open_wal
from shared.telemetry.redaction import redact

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SETTLE_S = 0.3
"""A file modified more recently than this may still be being written."""


class InboxPoller:
    def __init__(
        self, spec: FunctionSpec, inbox: Path, receipts: Path, *, interval_s: float = 0.5
    ) -> None:
        self.spec = spec
        self.container = spec.source
        self.folder = inbox / self.container
        self.folder.mkdir(parents=True, exist_ok=True)
        self.interval_s = interval_s
        self._db = open_wal(
            receipts,
            busy_timeout_s=10.0,
            schema="CREATE TABLE IF NOT EXISTS blob_receipts (container TEXT, name TEXT,"
            " etag TEXT, status TEXT, attempts INTEGER, reason TEXT, at REAL,"
            " PRIMARY KEY (container, name, etag))",
        )
        self.processed = 0

    def pending(self) -> list[tuple[str, str, Path]]:
        """Blob versions in the inbox with no final receipt: (name, etag, path)."""
        found = []
        now = time.time()
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            stat = path.stat()
            if now - stat.st_mtime < SETTLE_S:
                continue
            name = path.relative_to(self.folder).as_posix()
            etag = f'"0x{stat.st_mtime_ns:x}{stat.st_size:x}"'
            row = self._db.execute(
                "SELECT status FROM blob_receipts WHERE container=? AND name=? AND etag=?",
                (self.container, name, etag),
            ).fetchone()
            if row is None or row[0] == "retry":
                found.append((name, etag, path))
        return found

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, etag, path in self.pending():
                await self._invoke(name, etag, path)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        self._db.close()

    async def _invoke(self, name: str, etag: str, path: Path) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        try:
            await self.spec.user_function(blob_stream(self.container, name, data, etag))
        except Exception as exc:
            attempts = self._attempts(name, etag) + 1
            status = "poison" if attempts >= MAX_ATTEMPTS else "retry"
            reason = f"{type(exc).__name__}: {redact(str(exc))}"[:1000]
            self._receipt(name, etag, status, attempts, reason)
            log.warning(
                "blob %s/%s failed (attempt %d): %s", self.container, name, attempts, reason
            )
            return
        self._receipt(name, etag, "done", self._attempts(name, etag) + 1, "")
        self.processed += 1

    def _attempts(self, name: str, etag: str) -> int:
        row = self._db.execute(
            "SELECT attempts FROM blob_receipts WHERE container=? AND name=? AND etag=?",
            (self.container, name, etag),
        ).fetchone()
        return int(row[0]) if row else 0

    def _receipt(self, name: str, etag: str, status: str, attempts: int, reason: str) -> None:
        self._db.execute(
            "INSERT INTO blob_receipts VALUES (?,?,?,?,?,?,?) ON CONFLICT(container, name, etag)"
            " DO UPDATE SET status=excluded.status, attempts=excluded.attempts,"
            " reason=excluded.reason, at=excluded.at",
            (self.container, name, etag, status, attempts, reason, time.time()),
        )
