"""The broker's database: per-thread connections, one-transaction writes, doorbells."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from devhost.broker.doorbell import Doorbell, bell_directory, channel_token, ring
from devhost.broker.errors import (
    BrokerBusy,
    BrokerError,
    MessageTooLarge,
)
from devhost.broker.schema import _SCHEMA, _SCHEMA_LATE, SCHEMA_VERSION
from devhost.broker.values import (
    PropertyValue,
    SendSpec,
)
from shared.adapters.local.sqlite import open_wal

logger = logging.getLogger(__name__)


MAX_DELIVERY_COUNT_EXCEEDED: Final = "MaxDeliveryCountExceeded"


_MAX_ID_CHARS: Final = 128


_MAX_REASON_CHARS: Final = 4096


_SEEN_ID_PRUNE_INTERVAL_S: Final = 1.0


_SEEN_ID_PRUNE_BATCH: Final = 1000


_EVENT_PRUNE_INTERVAL_S: Final = 60.0


_EVENT_PRUNE_BATCH: Final = 1000


_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


@dataclass(frozen=True)
class _QueueSettings:
    lock_duration_s: float
    max_delivery_count: int
    duplicate_window_s: float
    max_message_bytes: int


@dataclass
class _ProcessState:
    """What one process keeps besides its connections: bells and pruning timers."""

    pid: int
    bells: dict[tuple[str, int], Doorbell | None] = field(default_factory=dict)
    last_seen_prune: float = -math.inf
    last_event_prune: dict[str, float] = field(default_factory=dict)


def _translate(error: sqlite3.OperationalError) -> Exception:
    message = str(error)
    if "locked" in message or "busy" in message:
        return BrokerBusy(f"broker database busy: {message}")
    return BrokerError(f"broker database error: {message}")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 260:
        raise ValueError(f"{kind} name must be a non-empty string of at most 260 characters")


def _check_partition(hub: str, partition: int, partitions: int) -> None:
    if not 0 <= partition < partitions:
        raise ValueError(f"event hub {hub!r} has partitions 0..{partitions - 1}, not {partition}")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def _encode_properties(properties: Mapping[str, PropertyValue] | None, what: str) -> str:
    if not properties:
        return "{}"
    for key, value in properties.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what} property names must be non-empty strings, got {key!r}")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(
                f"{what} property {key!r} must be str, int, float or bool,"
                f" not {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what} property {key!r} must be a finite number")
    return json.dumps(dict(properties), separators=(",", ":"))


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class _Database:
    """The connection, transaction and doorbell machinery the broker's parts share."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
        doorbells: bool = True,
    ) -> None:
        self.path = Path(path).resolve()
        self._doorbells = doorbells
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._bell_dir = bell_directory(self.path.parent)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._process: _ProcessState | None = None
        self._schema_ready_pid: int | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise BrokerError("the broker is closed")
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        conn = self._open(pid)
        self._local.conn, self._local.pid = conn, pid
        return conn

    def _guard(self) -> threading.Lock:
        """This process's lock: one inherited through fork may have been held by a thread
        that does not exist in the child, so a child makes its own."""
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock, self._lock_pid = threading.Lock(), pid
        return self._lock

    def _open(self, pid: int) -> sqlite3.Connection:
        with self._guard():
            inherited = [c for owner, c in self._connections if owner != pid]
            if inherited:
                _INHERITED_CONNECTIONS.extend(inherited)
                self._connections = [(o, c) for o, c in self._connections if o == pid]
        try:
            # Autocommit (transactions are explicit BEGIN IMMEDIATE), WAL, synchronous=FULL.
            conn = open_wal(self.path, busy_timeout_s=self._busy_timeout_s)
        except sqlite3.OperationalError as error:
            raise _translate(error) from error
        try:
            # Bound the WAL file on disk after checkpoints; it does not affect durability.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if self._schema_ready_pid != pid:
                self._create_schema(conn)
                self._schema_ready_pid = pid
        except sqlite3.OperationalError as error:
            conn.close()
            raise _translate(error) from error
        except BaseException:
            conn.close()
            raise
        with self._guard():
            self._connections.append((pid, conn))
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise BrokerError(
                    f"{self.path} has broker schema {version}; this code knows {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                # Schema 1 files lack the columns of the clock rule; their rows keep NULL there
                # (no bound) until they are next scheduled, locked or leased. Schema 2 files lack
                # time-to-live and deferral: their messages never expire and none is deferred.
                # Schema 3 files lack events' system properties: their events have none.
                for table, column, kind in (
                    ("sb_messages", "hold_s", "REAL"),
                    ("eh_consumers", "lease_s", "REAL"),
                    ("sb_messages", "expires_at", "REAL"),
                    ("sb_messages", "deferred", "INTEGER NOT NULL DEFAULT 0"),
                    ("eh_events", "message_id", "TEXT"),
                    ("eh_events", "correlation_id", "TEXT"),
                    ("eh_events", "content_type", "TEXT"),
                ):
                    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                for statement in _SCHEMA_LATE.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; committed (and fsynced) when the block exits."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise _translate(error) from error
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError):
                raise _translate(error) from error
            raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement in the block sees the same committed state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")  # ends the read; nothing was written

    def _state(self) -> _ProcessState:
        pid = os.getpid()
        with self._guard():
            if self._process is None or self._process.pid != pid:
                # Bells inherited through fork belong to the parent; never close or unlink them.
                self._process = _ProcessState(pid=pid)
            return self._process

    def _admit(
        self,
        conn: sqlite3.Connection,
        entity: str,
        kind: str,
        spec: SendSpec,
        properties: str,
        settings: _QueueSettings,
        now: float,
    ) -> bool:
        """Whether a message sent to ``entity`` (a queue or a topic) is stored: refused with
        ``MessageTooLarge`` over the entity's size limit (body and encoded properties), False
        when duplicate detection has seen its id inside the window."""
        size = len(spec.body) + len(properties)
        if size > settings.max_message_bytes:
            raise MessageTooLarge(
                f"message {spec.message_id!r} is {size} bytes; {kind} {entity!r}"
                f" accepts at most {settings.max_message_bytes}"
            )
        return self._remember_id(conn, entity, spec.message_id, settings, now)

    def _remember_id(
        self,
        conn: sqlite3.Connection,
        queue: str,
        message_id: str,
        settings: _QueueSettings,
        now: float,
    ) -> bool:
        """Record ``message_id`` as seen; False when it was already seen within the window."""
        if settings.duplicate_window_s <= 0:
            return True
        cursor = conn.execute(
            "INSERT INTO sb_seen_ids (queue, message_id, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (queue, message_id) DO UPDATE SET expires_at = excluded.expires_at"
            " WHERE sb_seen_ids.expires_at <= ?",
            (queue, message_id, now + settings.duplicate_window_s, now),
        )
        return cursor.rowcount == 1

    def _prune_seen_ids(self, conn: sqlite3.Connection, now: float) -> None:
        state = self._state()
        tick = time.monotonic()
        if tick - state.last_seen_prune < _SEEN_ID_PRUNE_INTERVAL_S:
            return
        state.last_seen_prune = tick
        conn.execute(
            "DELETE FROM sb_seen_ids WHERE (queue, message_id) IN (SELECT queue, message_id"
            " FROM sb_seen_ids WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
            (now, _SEEN_ID_PRUNE_BATCH),
        )

    def _bell(self, kind: str, name: str) -> Doorbell | None:
        """This thread's bell for a channel, bound on first use; None when bells cannot work."""
        if not self._doorbells:
            return None
        state = self._state()
        key = (f"{kind}:{name}", threading.get_ident())
        if key in state.bells:
            return state.bells[key]
        bell: Doorbell | None = None
        try:
            bell = Doorbell(self._bell_dir, channel_token(kind, name))
        except OSError as error:
            # Remembered as None so the warning is logged once, not at every wait.
            logger.warning(
                "doorbell unavailable in %s (%s); falling back to polling", self._bell_dir, error
            )
        state.bells[key] = bell
        return bell

    def _ring(self, kind: str, name: str) -> None:
        if not self._doorbells:
            return
        try:
            ring(self._bell_dir, channel_token(kind, name))
        except OSError as error:  # a wake-up is an optimisation; the commit already happened
            logger.debug("could not ring %s bells for %s: %s", kind, name, error)

    def close(self) -> None:
        """Close this process's connections and bells. Call once every user has stopped."""
        pid = os.getpid()
        with self._guard():
            self._closed = True
            connections, self._connections = self._connections, []
            process, self._process = self._process, None
        for owner, conn in connections:
            if owner == pid:
                conn.close()
            else:
                _INHERITED_CONNECTIONS.append(conn)
        if process is not None and process.pid == pid:
            for bell in process.bells.values():
                if bell is not None:
                    bell.close()
            with contextlib.suppress(OSError):
                # Succeeds only when no other process has a bell there; keeps /tmp tidy.
                os.rmdir(self._bell_dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
