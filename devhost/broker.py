"""The devhost broker: Service Bus queue and Event Hubs semantics in one SQLite file.

Several worker processes (and threads) share one database. Each thread of each process opens its
own connection lazily, so nothing crosses a ``fork``; a connection inherited from a parent
process is set aside, never used or closed, because closing it could disturb the parent's locks.

Durability. An acknowledged call is on disk before it returns:

* ``journal_mode=WAL`` - a commit appends to the write-ahead log and never rewrites the database
  in place, so a process killed mid-write (SIGKILL) leaves the last committed state intact and
  readers never block the writer;
* ``synchronous=FULL`` - SQLite fsyncs the WAL at every commit, before the call returns, so a
  committed send or complete also survives power loss, not only a process crash
  (``NORMAL`` would only survive the crash);
* every mutating call is exactly one ``BEGIN IMMEDIATE`` transaction: it takes the write lock up
  front (waiting up to ``busy_timeout``), so two processes cannot both read the same message as
  free and both lock it, and a read-then-write never fails half-way with ``SQLITE_BUSY``.

Service Bus semantics: peek-lock with lock duration and renewal, delivery count,
MaxDeliveryCount to the dead-letter sub-queue with a reason, scheduled messages, duplicate
detection by message id within a window, FIFO by sequence number among visible messages.
Event Hubs semantics: a partitioned append-only log, partition by a stable hash of the partition
key (round-robin without one), consumer groups with leased partition ownership and checkpoints
that only the lease holder can move, and only forward.

Waiting receivers are woken across processes by the doorbells of ``devhost.doorbell``; timed
polling remains the fallback.
"""

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
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from devhost.doorbell import Doorbell, bell_directory, channel_token, ring
from shared.errors import OversizeMessage, SwitchboardError, TransientError
from shared.messages import EVENT_HUBS_MAX_BYTES, SERVICE_BUS_MAX_BYTES
from shared.sqlite import open_wal

logger = logging.getLogger(__name__)

PropertyValue = str | int | float | bool

SCHEMA_VERSION: Final = 2
MAX_DELIVERY_COUNT_EXCEEDED: Final = "MaxDeliveryCountExceeded"
_MAX_ID_CHARS: Final = 128
_MAX_REASON_CHARS: Final = 4096
_SEEN_ID_PRUNE_INTERVAL_S: Final = 1.0
_SEEN_ID_PRUNE_BATCH: Final = 1000
_EVENT_PRUNE_INTERVAL_S: Final = 60.0
_EVENT_PRUNE_BATCH: Final = 1000
# Connections inherited through fork(): kept referenced so the garbage collector never closes
# them in the child (the parent still uses the same SQLite file and its locks).
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


# --------------------------------------------------------------------------------------------
# Errors


class BrokerError(SwitchboardError):
    """Base class of the errors the devhost broker raises."""


class UnknownQueue(BrokerError):
    """The queue was never declared with :meth:`Broker.ensure_queue`."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"unknown queue {queue!r}; declare it with ensure_queue first")
        self.queue = queue


class UnknownHub(BrokerError):
    """The event hub was never declared with :meth:`Broker.ensure_hub`."""

    def __init__(self, hub: str) -> None:
        super().__init__(f"unknown event hub {hub!r}; declare it with ensure_hub first")
        self.hub = hub


class LockLost(BrokerError, TransientError):
    """The message lock expired, was taken over by another receiver, or the message is gone."""


class LeaseLost(BrokerError, TransientError):
    """This owner no longer holds the lease on the partition (expired or taken over)."""


class BrokerBusy(BrokerError, TransientError):
    """The database stayed locked by other writers for longer than the busy timeout."""


class MessageTooLarge(BrokerError, OversizeMessage):
    """A message or event is larger than the transport accepts."""

    reason_code = "OversizeMessage"


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class SendSpec:
    """One message of :meth:`Broker.send_batch`, with the same fields as :meth:`Broker.send`."""

    body: bytes
    message_id: str
    correlation_id: str | None = None
    subject: str | None = None
    content_type: str | None = None
    application_properties: Mapping[str, PropertyValue] | None = None
    scheduled_enqueue_time: float | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """A message delivered under a peek-lock; settle it with its ``lock_token``."""

    queue: str
    message_id: str
    body: bytes
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: dict[str, PropertyValue]
    delivery_count: int
    enqueued_time: float
    sequence_number: int
    lock_token: str
    locked_until: float
    scheduled_enqueue_time: float | None


@dataclass(frozen=True)
class DeadLetter:
    """A message in a queue's dead-letter sub-queue, body and properties intact."""

    queue: str
    message_id: str
    body: bytes
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: dict[str, PropertyValue]
    delivery_count: int
    enqueued_time: float
    sequence_number: int
    reason: str
    description: str
    dead_lettered_time: float


@dataclass(frozen=True)
class QueueStats:
    """Counts of one queue at one moment, plus its lifetime totals."""

    active: int
    scheduled: int
    locked: int
    deadlettered: int
    sent_total: int
    completed_total: int
    duplicates_total: int


class EventPosition(NamedTuple):
    """Where :meth:`Broker.publish_batch` appended an event; ``offset`` is what a reader sees."""

    partition_id: int
    sequence_number: int
    offset: str


@dataclass(frozen=True)
class EventSpec:
    """One event of :meth:`Broker.publish_batch`."""

    body: bytes
    partition_key: str | None = None
    properties: Mapping[str, PropertyValue] | None = None


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from a partition of the log."""

    hub: str
    partition_id: int
    sequence_number: int
    offset: str
    body: bytes
    partition_key: str | None
    properties: dict[str, PropertyValue]
    enqueued_time: float


@dataclass(frozen=True)
class PartitionStats:
    """One partition as one consumer group sees it."""

    partition_id: int
    last_sequence: int
    checkpoint: int
    backlog: int
    owner: str | None
    lease_until: float


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


# --------------------------------------------------------------------------------------------
# Schema

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sb_queues (
    name TEXT PRIMARY KEY,
    lock_duration_s REAL NOT NULL,
    max_delivery_count INTEGER NOT NULL,
    duplicate_window_s REAL NOT NULL,
    max_message_bytes INTEGER NOT NULL,
    sent_total INTEGER NOT NULL DEFAULT 0,
    completed_total INTEGER NOT NULL DEFAULT 0,
    duplicates_total INTEGER NOT NULL DEFAULT 0
);
-- One row per message in a queue or its dead-letter sub-queue. ``available_at`` is when a
-- 'scheduled' message becomes due or a 'locked' message's lock expires, and ``hold_s`` how far
-- ahead of the clock it was set (the scheduling delay, the lock duration): see Broker's clock
-- rule. Receive promotes such rows to 'ready' lazily, so no timer is needed.
CREATE TABLE IF NOT EXISTS sb_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ready', 'scheduled', 'locked', 'dead')),
    available_at REAL NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    correlation_id TEXT,
    subject TEXT,
    content_type TEXT,
    properties TEXT NOT NULL,
    enqueued_time REAL NOT NULL,
    scheduled_enqueue_time REAL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT,
    lock_owner TEXT,
    last_error TEXT,
    dlq_reason TEXT,
    dlq_description TEXT,
    dead_lettered_time REAL,
    hold_s REAL
);
-- (queue, state) rows come out in rowid (= sequence) order: FIFO receive without sorting.
CREATE INDEX IF NOT EXISTS sb_messages_fifo ON sb_messages (queue, state);
CREATE INDEX IF NOT EXISTS sb_messages_due ON sb_messages (queue, state, available_at);
CREATE UNIQUE INDEX IF NOT EXISTS sb_messages_lock
    ON sb_messages (lock_token) WHERE lock_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS sb_messages_id ON sb_messages (queue, message_id);
CREATE TABLE IF NOT EXISTS sb_seen_ids (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sb_seen_ids_expiry ON sb_seen_ids (expires_at);

CREATE TABLE IF NOT EXISTS eh_hubs (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_s REAL NOT NULL,
    next_partition INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS eh_partitions (
    hub TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (hub, partition_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eh_events (
    id INTEGER PRIMARY KEY,
    hub TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    sequence_number INTEGER NOT NULL,
    body BLOB NOT NULL,
    partition_key TEXT,
    properties TEXT NOT NULL,
    enqueued_time REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS eh_events_position
    ON eh_events (hub, partition_id, sequence_number);
CREATE TABLE IF NOT EXISTS eh_consumers (
    hub TEXT NOT NULL,
    consumer_group TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    lease_s REAL,
    checkpoint INTEGER NOT NULL DEFAULT -1,
    checkpoint_time REAL,
    PRIMARY KEY (hub, consumer_group, partition_id)
) WITHOUT ROWID;
"""

_MESSAGE_COLUMNS: Final = (
    "seq, queue, message_id, body, correlation_id, subject, content_type, properties, "
    "delivery_count, enqueued_time, scheduled_enqueue_time"
)


# --------------------------------------------------------------------------------------------
# The broker


class Broker:
    """Service Bus queues and Event Hubs on one SQLite file, shared by processes and threads.

    Every method is synchronous and short (one transaction of well under a millisecond of work),
    so the runtime may call them from its event loop; only the ``wait_for_*`` methods sleep.
    ``clock`` returns epoch seconds and exists so tests can move time by hand. With
    ``doorbells=False`` waiting falls back to timed polling (for platforms without unix
    datagram sockets, and to measure what the bells save).

    **The clock rule.** Scheduled enqueue times, lock expiries and partition leases are wall
    times, because several processes (and a host restarted later) must agree on them; the wall
    clock can jump. Each such deadline is stored with how far ahead of the clock it was set
    (``hold_s``: the scheduling delay, the queue's lock duration, the lease duration), and it
    never counts as further away than that: the effective deadline is
    ``min(deadline, now + hold_s)``. So:

    * after the clock goes **back** by any amount, a scheduled message is due at the latest its
      own delay after the next receive on its queue, a lock lasts at most one lock duration
      after it, and a dead owner's lease at most one lease duration after the next
      ``claim_partitions`` - never the size of the jump longer. Those calls store the
      shortened deadline, so every process sees it from then on; ``queue_stats`` counts a
      message whose deadline is still to be shortened as active, so the scaler starts a
      receiver for a queue it had scaled to zero.
    * after the clock goes **forward**, deadlines come early: scheduled messages are released
      early (as if their delay had passed; a retry that comes early is retried again, so this is
      accepted), locks expire early (their messages are delivered again: the pipeline's
      at-least-once handling makes that harmless), leases move to other owners.

    Durations the broker measures within one process (its pruning intervals) use
    ``time.monotonic``.
    """

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

    # -- connections and transactions ----------------------------------------------------------

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
                # (no bound) until they are next scheduled, locked or leased.
                for table, column in (("sb_messages", "hold_s"), ("eh_consumers", "lease_s")):
                    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL")
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

    # -- Service Bus: queues -------------------------------------------------------------------

    def ensure_queue(
        self,
        name: str,
        *,
        lock_duration_s: float = 30.0,
        max_delivery_count: int = 10,
        duplicate_window_s: float = 600.0,
        max_message_bytes: int = SERVICE_BUS_MAX_BYTES,
    ) -> None:
        """Declare queue ``name`` or update its settings; safe to call from every process.

        A ``duplicate_window_s`` of 0 turns duplicate detection off.
        """
        _check_name("queue", name)
        if not (math.isfinite(lock_duration_s) and lock_duration_s > 0):
            raise ValueError(f"lock_duration_s must be positive, got {lock_duration_s!r}")
        if max_delivery_count < 1:
            raise ValueError(f"max_delivery_count must be at least 1, got {max_delivery_count}")
        if not (math.isfinite(duplicate_window_s) and duplicate_window_s >= 0):
            raise ValueError(f"duplicate_window_s must be >= 0, got {duplicate_window_s!r}")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sb_queues (name, lock_duration_s, max_delivery_count,"
                " duplicate_window_s, max_message_bytes) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET lock_duration_s = excluded.lock_duration_s,"
                " max_delivery_count = excluded.max_delivery_count,"
                " duplicate_window_s = excluded.duplicate_window_s,"
                " max_message_bytes = excluded.max_message_bytes",
                (name, lock_duration_s, max_delivery_count, duplicate_window_s, max_message_bytes),
            )

    def queues(self) -> list[str]:
        """Return the names of every declared queue."""
        with self._snapshot() as conn:
            rows = conn.execute("SELECT name FROM sb_queues ORDER BY name").fetchall()
        return [row[0] for row in rows]

    def send(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        correlation_id: str | None = None,
        subject: str | None = None,
        content_type: str | None = None,
        application_properties: Mapping[str, PropertyValue] | None = None,
        scheduled_enqueue_time: float | None = None,
    ) -> bool:
        """Enqueue one message durably; return False when dropped as a duplicate ``message_id``.

        A message id already sent to this queue within its duplicate-detection window is
        dropped, even when that earlier message has been completed - the Service Bus rule the
        pipeline's idempotent re-sends rely on.
        """
        spec = SendSpec(
            body=body,
            message_id=message_id,
            correlation_id=correlation_id,
            subject=subject,
            content_type=content_type,
            application_properties=application_properties,
            scheduled_enqueue_time=scheduled_enqueue_time,
        )
        return self.send_batch(queue, [spec])[0]

    def send_batch(self, queue: str, messages: Sequence[SendSpec]) -> list[bool]:
        """Enqueue several messages in one transaction; one flag per message as :meth:`send`.

        Either every message is stored (or dropped as a duplicate) or, on error, none is.
        """
        if not messages:
            return []
        rows = [_encode_send(spec) for spec in messages]
        accepted: list[bool] = []
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            for spec, properties in zip(messages, rows, strict=True):
                size = len(spec.body) + len(properties)
                if size > settings.max_message_bytes:
                    raise MessageTooLarge(
                        f"message {spec.message_id!r} is {size} bytes; queue {queue!r}"
                        f" accepts at most {settings.max_message_bytes}"
                    )
                if not self._remember_id(conn, queue, spec.message_id, settings, now):
                    accepted.append(False)
                    continue
                due = spec.scheduled_enqueue_time
                scheduled = due is not None and due > now
                conn.execute(
                    "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
                    " correlation_id, subject, content_type, properties, enqueued_time,"
                    " scheduled_enqueue_time, hold_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        queue,
                        "scheduled" if scheduled else "ready",
                        due if scheduled else now,
                        spec.message_id,
                        spec.body,
                        spec.correlation_id,
                        spec.subject,
                        spec.content_type,
                        properties,
                        now,
                        due,
                        (due - now) if scheduled and due is not None else None,
                    ),
                )
                accepted.append(True)
            stored = accepted.count(True)
            conn.execute(
                "UPDATE sb_queues SET sent_total = sent_total + ?,"
                " duplicates_total = duplicates_total + ? WHERE name = ?",
                (stored, len(accepted) - stored, queue),
            )
            self._prune_seen_ids(conn, now)
        if any(accepted):
            # Also for scheduled-only sends: sleeping receivers then re-read the next due time.
            self._ring("q", queue)
        return accepted

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

    def receive(
        self, queue: str, *, max_messages: int = 1, owner: str = ""
    ) -> list[ReceivedMessage]:
        """Lock and return up to ``max_messages`` visible messages, oldest sequence first.

        Visible means due (not scheduled for later) and not under a live lock. Each delivery
        increments the delivery count and issues a fresh lock token. A message whose delivery
        count has already reached the queue's MaxDeliveryCount is dead-lettered instead of
        being delivered again.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        received: list[ReceivedMessage] = []
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            _promote_due(conn, queue, now)
            locked_until = now + settings.lock_duration_s
            hold_s = settings.lock_duration_s
            while len(received) < max_messages:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS}, last_error FROM sb_messages"
                    " WHERE queue = ? AND state = 'ready' ORDER BY seq LIMIT ?",
                    (queue, max_messages - len(received)),
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    seq, delivery_count = row[0], row[8]
                    if delivery_count >= settings.max_delivery_count:
                        description = row[11] or (
                            f"delivered {delivery_count} times without being completed"
                        )
                        _move_to_dlq(conn, seq, MAX_DELIVERY_COUNT_EXCEEDED, description, now)
                        continue
                    token = str(uuid.uuid4())
                    conn.execute(
                        "UPDATE sb_messages SET state = 'locked', available_at = ?, hold_s = ?,"
                        " delivery_count = delivery_count + 1, lock_token = ?, lock_owner = ?"
                        " WHERE seq = ?",
                        (locked_until, hold_s, token, owner, seq),
                    )
                    received.append(_received(row, token, locked_until, delivery_count + 1))
        return received

    def renew_lock(self, queue: str, lock_token: str) -> float:
        """Extend a live lock by the queue's lock duration; return the new ``locked_until``."""
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            seq = _locked_seq(conn, queue, lock_token, now)
            locked_until = now + settings.lock_duration_s
            conn.execute(
                "UPDATE sb_messages SET available_at = ?, hold_s = ? WHERE seq = ?",
                (locked_until, settings.lock_duration_s, seq),
            )
        return locked_until

    def complete(self, queue: str, lock_token: str) -> None:
        """Remove a message for good; raises :class:`LockLost` unless its lock is still held."""
        with self._write() as conn:
            _queue_settings(conn, queue)
            seq = _locked_seq(conn, queue, lock_token, self._clock())
            conn.execute("DELETE FROM sb_messages WHERE seq = ?", (seq,))
            conn.execute(
                "UPDATE sb_queues SET completed_total = completed_total + 1 WHERE name = ?",
                (queue,),
            )

    def complete_batch(self, queue: str, lock_tokens: Sequence[str]) -> list[bool]:
        """Complete several messages in one transaction; False for each lock already lost."""
        done: list[bool] = []
        with self._write() as conn:
            _queue_settings(conn, queue)
            now = self._clock()
            for token in lock_tokens:
                try:
                    seq = _locked_seq(conn, queue, token, now)
                except LockLost:
                    done.append(False)
                    continue
                conn.execute("DELETE FROM sb_messages WHERE seq = ?", (seq,))
                done.append(True)
            conn.execute(
                "UPDATE sb_queues SET completed_total = completed_total + ? WHERE name = ?",
                (done.count(True), queue),
            )
        return done

    def abandon(self, queue: str, lock_token: str, *, reason: str | None = None) -> None:
        """Release the lock at once so the message can be delivered again.

        When the message has already been delivered MaxDeliveryCount times it goes to the
        dead-letter queue instead, with reason ``MaxDeliveryCountExceeded`` and ``reason`` (the
        last error) as the description.
        """
        released = False
        description = _clip(reason) if reason else None
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            seq = _locked_seq(conn, queue, lock_token, now)
            (delivery_count,) = conn.execute(
                "SELECT delivery_count FROM sb_messages WHERE seq = ?", (seq,)
            ).fetchone()
            if delivery_count >= settings.max_delivery_count:
                _move_to_dlq(
                    conn,
                    seq,
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    description or f"abandoned on delivery {delivery_count}",
                    now,
                )
            else:
                conn.execute(
                    "UPDATE sb_messages SET state = 'ready', available_at = ?, lock_token = NULL,"
                    " lock_owner = NULL, last_error = coalesce(?, last_error) WHERE seq = ?",
                    (now, description, seq),
                )
                released = True
        if released:
            self._ring("q", queue)

    def dead_letter(
        self, queue: str, lock_token: str, *, reason: str, description: str = ""
    ) -> None:
        """Move a locked message to the dead-letter queue with ``reason`` and ``description``."""
        if not reason:
            raise ValueError("a dead-letter reason is required")
        with self._write() as conn:
            _queue_settings(conn, queue)
            now = self._clock()
            seq = _locked_seq(conn, queue, lock_token, now)
            _move_to_dlq(conn, seq, _clip(reason), _clip(description), now)

    def deadletters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead-lettered messages of ``queue``, oldest sequence first."""
        with self._snapshot() as conn:
            _queue_settings(conn, queue)
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS}, dlq_reason, dlq_description, dead_lettered_time"
                " FROM sb_messages WHERE queue = ? AND state = 'dead' ORDER BY seq LIMIT ?",
                (queue, max(0, limit)),
            ).fetchall()
            return [_dead_letter(row) for row in rows]

    def peek(self, queue: str, *, limit: int = 100) -> list[ReceivedMessage]:
        """Return up to ``limit`` live messages (ready, scheduled or locked) without locking them.

        Peeked messages carry an empty lock token: they cannot be settled, only read, as with
        Service Bus peek.
        """
        with self._snapshot() as conn:
            _queue_settings(conn, queue)
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM sb_messages"
                " WHERE queue = ? AND state IN ('ready', 'scheduled', 'locked')"
                " ORDER BY seq LIMIT ?",
                (queue, max(0, limit)),
            ).fetchall()
            return [_received(row, "", 0.0, row[8]) for row in rows]

    def replay_deadletters(self, queue: str, *, message_ids: Sequence[str] | None = None) -> int:
        """Put dead-lettered messages back on the queue; return how many were sent.

        Each returns as a new message at the back of the queue (new sequence number, delivery
        count 0, body and properties intact) under a new message id, :func:`replay_id` of its
        id and its sequence number, with the application property ``OriginalMessageId`` naming
        the id it was first sent under. As with resubmitting from a Service Bus dead-letter
        queue, the copy is a new send: it is not dropped as a duplicate of the original (whose
        id duplicate detection still remembers), and its own id is recorded for duplicate
        detection, so the same dead letter replayed twice is sent once. ``message_ids`` limits
        the replay to dead letters with those ids.
        """
        sent = 0
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            where, params = _dead_filter(queue, message_ids)
            rows = conn.execute(
                f"SELECT seq, message_id, properties FROM sb_messages WHERE {where} ORDER BY seq",
                params,
            ).fetchall()
            for seq, message_id, properties in rows:
                new_id = replay_id(message_id, seq)
                props = json.loads(properties)
                props.setdefault("OriginalMessageId", _original_id(message_id))
                if self._remember_id(conn, queue, new_id, settings, now):
                    conn.execute(
                        "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
                        " correlation_id, subject, content_type, properties, enqueued_time,"
                        " scheduled_enqueue_time) SELECT queue, 'ready', ?, ?, body,"
                        " correlation_id, subject, content_type, ?, ?, NULL FROM sb_messages"
                        " WHERE seq = ?",
                        (now, new_id, json.dumps(props, separators=(",", ":")), now, seq),
                    )
                    sent += 1
                else:
                    logger.warning("dead letter %s was replayed already as %s", message_id, new_id)
                conn.execute("DELETE FROM sb_messages WHERE seq = ?", (seq,))
        if sent:
            self._ring("q", queue)
            logger.info("replayed %d dead-lettered messages on %s", sent, queue)
        return sent

    def replay_parked(self, parking: str, *, original_ids: Sequence[str] | None = None) -> int:
        """Move parked messages back to the queues they were parked from; return how many.

        A parked message is one the pipeline sent to the parking queue ``parking`` with the
        application properties ``OriginalQueue`` and ``OriginalMessageId``. In one transaction
        each goes to ``OriginalQueue`` as a new message (back of the queue, delivery count 0,
        body, correlation id and content type kept) under the id
        ``{OriginalMessageId}:replay:{n}`` (:func:`replay_id`), ``n`` being its sequence number on
        the parking queue, with ``OriginalMessageId`` as its one application property, and leaves
        the parking queue. An earlier ``:replay:`` suffix is replaced, not extended. As with
        :meth:`replay_deadletters`, the new id is recorded for the target queue's duplicate
        detection (so a parked message replayed twice is sent once) and the original's is not
        checked (so the replay is not dropped as its duplicate).

        ``original_ids`` limits the replay to messages whose ``OriginalMessageId`` is one of
        them. Parked messages in the parking queue's own dead-letter sub-queue are replayed
        too; one under a live lock is left to its receiver, and one whose ``OriginalQueue`` is
        missing or not a declared queue stays parked. Messages that are not replayed are not
        touched: no lock, no delivery.
        """
        if isinstance(original_ids, str):
            raise ValueError("original_ids must be a sequence of ids, not one string")
        wanted = None if original_ids is None else set(original_ids)
        targets: set[str] = set()
        moved = 0
        with self._write() as conn:
            _queue_settings(conn, parking)
            now = self._clock()
            _clamp_deadlines(conn, parking, now)
            declared = {row[0] for row in conn.execute("SELECT name FROM sb_queues")}
            rows = conn.execute(
                "SELECT seq, message_id, body, correlation_id, content_type, properties"
                " FROM sb_messages WHERE queue = ? AND (state IN ('ready', 'scheduled', 'dead')"
                " OR (state = 'locked' AND available_at <= ?)) ORDER BY seq",
                (parking, now),
            ).fetchall()
            for seq, message_id, body, correlation_id, content_type, properties in rows:
                props = json.loads(properties)
                original = str(props.get("OriginalMessageId", message_id))
                if wanted is not None and original not in wanted:
                    continue
                target = props.get("OriginalQueue")
                if not isinstance(target, str) or target not in declared or target == parking:
                    logger.warning(
                        "parked message %s has no queue to return to (OriginalQueue %r)",
                        original,
                        target,
                    )
                    continue
                new_id = replay_id(original, seq)
                base = _original_id(original)
                if self._remember_id(conn, target, new_id, _queue_settings(conn, target), now):
                    conn.execute(
                        "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
                        " correlation_id, subject, content_type, properties, enqueued_time,"
                        " scheduled_enqueue_time) VALUES (?, 'ready', ?, ?, ?, ?, NULL, ?, ?, ?,"
                        " NULL)",
                        (
                            target,
                            now,
                            new_id,
                            body,
                            correlation_id,
                            content_type,
                            json.dumps({"OriginalMessageId": base}, separators=(",", ":")),
                            now,
                        ),
                    )
                    targets.add(target)
                    moved += 1
                else:
                    logger.warning("parked message %s was replayed already as %s", original, new_id)
                conn.execute("DELETE FROM sb_messages WHERE seq = ?", (seq,))
        for target in sorted(targets):
            self._ring("q", target)
        if moved:
            logger.info("replayed %d parked messages from %s", moved, parking)
        return moved

    def purge_deadletters(self, queue: str, *, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead-lettered messages for good (all, or only ``message_ids``); return a count."""
        with self._write() as conn:
            _queue_settings(conn, queue)
            where, params = _dead_filter(queue, message_ids)
            purged = conn.execute(f"DELETE FROM sb_messages WHERE {where}", params).rowcount
        if purged:
            logger.info("purged %d dead-lettered messages from %s", purged, queue)
        return purged

    def queue_stats(self) -> dict[str, QueueStats]:
        """Return the counts of every queue: active (visible now), scheduled, locked, dead.

        A scheduled or locked message whose deadline the clock rule would shorten (the clock
        went back) counts as active until a receive has stored the shorter deadline: the scaler
        then starts a receiver even for a queue it had scaled to zero.
        """
        with self._snapshot() as conn:
            now = self._clock()
            counts: dict[str, dict[str, int]] = {}
            for queue, state, due, total in conn.execute(
                f"SELECT queue, state, sum({_VISIBLE}), count(*) FROM sb_messages"
                " GROUP BY queue, state",
                (now, now),
            ):
                per_queue = counts.setdefault(queue, {})
                if state in ("scheduled", "locked"):
                    # A due scheduled message or an expired lock is visible now.
                    per_queue["active"] = per_queue.get("active", 0) + due
                    per_queue[state] = total - due
                elif state == "ready":
                    per_queue["active"] = per_queue.get("active", 0) + total
                else:
                    per_queue["deadlettered"] = total
            stats: dict[str, QueueStats] = {}
            for name, sent, completed, duplicates in conn.execute(
                "SELECT name, sent_total, completed_total, duplicates_total FROM sb_queues"
            ):
                per_queue = counts.get(name, {})
                stats[name] = QueueStats(
                    active=per_queue.get("active", 0),
                    scheduled=per_queue.get("scheduled", 0),
                    locked=per_queue.get("locked", 0),
                    deadlettered=per_queue.get("deadlettered", 0),
                    sent_total=sent,
                    completed_total=completed,
                    duplicates_total=duplicates,
                )
            return stats

    def next_visible_time(self, queue: str) -> float | None:
        """Return when the next message of ``queue`` becomes visible (``now`` or earlier when
        one is visible already), or None when the queue holds nothing that could be delivered.
        """
        with self._snapshot() as conn:
            _queue_settings(conn, queue)
            if conn.execute(
                "SELECT 1 FROM sb_messages WHERE queue = ? AND state = 'ready' LIMIT 1", (queue,)
            ).fetchone():
                return self._clock()
            # One query per state: each is a single index seek, where IN would scan the range.
            times = [
                conn.execute(
                    "SELECT min(available_at) FROM sb_messages WHERE queue = ? AND state = ?",
                    (queue, state),
                ).fetchone()[0]
                for state in ("scheduled", "locked")
            ]
            due = [float(t) for t in times if t is not None]
            return min(due) if due else None

    async def wait_for_messages(self, queue: str, timeout_s: float) -> bool:
        """Sleep until ``queue`` may have a visible message or ``timeout_s`` passes.

        Returns True when a sender rang, a message is visible already, or a scheduled message
        or expired lock became due; False on a plain timeout. A True is a hint: another
        receiver may win the message, so callers receive and wait again.
        """
        bell = self._bell("q", queue)
        if bell is not None:
            # Ring bytes from before this check are stale: the check below sees their commits.
            bell.drain()
        next_visible = self.next_visible_time(queue)
        now = self._clock()
        if next_visible is not None and next_visible <= now:
            return True
        wait_s = max(0.0, timeout_s)
        due_first = next_visible is not None and next_visible - now <= wait_s
        if due_first:
            assert next_visible is not None
            wait_s = next_visible - now
        if bell is None:
            await _sleep(wait_s)
            return due_first
        rung = await bell.wait(wait_s)
        return rung or due_first

    # -- Event Hubs ----------------------------------------------------------------------------

    def ensure_hub(self, name: str, *, partitions: int = 4, retention_s: float = 86400.0) -> None:
        """Declare event hub ``name``; its partition count may grow but never shrink."""
        _check_name("event hub", name)
        if not 1 <= partitions <= 1024:
            raise ValueError(f"partitions must be between 1 and 1024, got {partitions}")
        if not (math.isfinite(retention_s) and retention_s > 0):
            raise ValueError(f"retention_s must be positive, got {retention_s!r}")
        with self._write() as conn:
            row = conn.execute("SELECT partitions FROM eh_hubs WHERE name = ?", (name,)).fetchone()
            if row is not None and partitions < row[0]:
                raise BrokerError(
                    f"event hub {name!r} has {row[0]} partitions; they cannot be reduced"
                    f" to {partitions}"
                )
            conn.execute(
                "INSERT INTO eh_hubs (name, partitions, retention_s) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET partitions = excluded.partitions,"
                " retention_s = excluded.retention_s",
                (name, partitions, retention_s),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO eh_partitions (hub, partition_id) VALUES (?, ?)",
                [(name, p) for p in range(partitions)],
            )

    def publish(
        self,
        hub: str,
        body: bytes,
        *,
        partition_key: str | None = None,
        properties: Mapping[str, PropertyValue] | None = None,
    ) -> EventPosition:
        """Append one event durably; return where it landed."""
        event = EventSpec(body=body, partition_key=partition_key, properties=properties)
        return self.publish_batch(hub, [event])[0]

    def publish_batch(self, hub: str, events: Sequence[EventSpec]) -> list[EventPosition]:
        """Append several events in one transaction; one position per event, in order.

        Events with a partition key go to ``partition_for_key(key)``, so one key keeps its order;
        events without one are spread round-robin.
        """
        if not events:
            return []
        encoded = [_encode_event(event) for event in events]
        positions: list[EventPosition] = []
        with self._write() as conn:
            partitions, retention_s, next_partition = _hub_settings(conn, hub)
            now = self._clock()
            for event, properties in zip(events, encoded, strict=True):
                if event.partition_key is not None:
                    partition = partition_for_key(event.partition_key, partitions)
                else:
                    partition = next_partition % partitions
                    next_partition += 1
                (sequence,) = conn.execute(
                    "UPDATE eh_partitions SET last_sequence = last_sequence + 1"
                    " WHERE hub = ? AND partition_id = ? RETURNING last_sequence",
                    (hub, partition),
                ).fetchone()
                cursor = conn.execute(
                    "INSERT INTO eh_events (hub, partition_id, sequence_number, body,"
                    " partition_key, properties, enqueued_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (hub, partition, sequence, event.body, event.partition_key, properties, now),
                )
                positions.append(EventPosition(partition, sequence, str(cursor.lastrowid)))
            conn.execute(
                "UPDATE eh_hubs SET next_partition = ? WHERE name = ?",
                (next_partition % partitions, hub),
            )
            self._prune_events(conn, hub, partitions, now - retention_s)
        self._ring("eh", hub)
        return positions

    def _prune_events(
        self, conn: sqlite3.Connection, hub: str, partitions: int, cutoff: float
    ) -> None:
        """Drop events older than the hub's retention from the head of each partition."""
        state = self._state()
        tick = time.monotonic()
        if tick - state.last_event_prune.get(hub, -math.inf) < _EVENT_PRUNE_INTERVAL_S:
            return
        state.last_event_prune[hub] = tick
        for partition in range(partitions):
            conn.execute(
                "DELETE FROM eh_events WHERE id IN (SELECT id FROM eh_events"
                " WHERE hub = ? AND partition_id = ? ORDER BY sequence_number LIMIT ?)"
                " AND enqueued_time < ?",
                (hub, partition, _EVENT_PRUNE_BATCH, cutoff),
            )

    def claim_partitions(
        self, hub: str, consumer_group: str, owner: str, *, lease_s: float = 10.0
    ) -> list[int]:
        """Claim and renew this owner's fair share of partitions; return the ones it now holds.

        Owners are the holders of unexpired leases plus the caller; each gets ``partitions //
        owners`` or one more. Free and expired partitions are taken first; when none is left an
        owner short of its share takes one from the owner holding the most. Call it again well
        before ``lease_s`` passes to renew; an owner that stops calling loses its partitions to
        the others when its leases expire.
        """
        _check_name("consumer group", consumer_group)
        if not owner:
            raise ValueError("owner must be a non-empty string")
        if not (math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"lease_s must be positive, got {lease_s!r}")
        with self._write() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            now = self._clock()
            conn.executemany(
                "INSERT OR IGNORE INTO eh_consumers (hub, consumer_group, partition_id)"
                " VALUES (?, ?, ?)",
                [(hub, consumer_group, p) for p in range(partitions)],
            )
            holders: dict[int, str] = {}
            # The clock rule: a lease never runs further ahead than its own duration.
            conn.execute(
                "UPDATE eh_consumers SET lease_until = ? + lease_s WHERE hub = ?"
                " AND consumer_group = ? AND lease_until > ? + lease_s",
                (now, hub, consumer_group, now),
            )
            for partition, holder, lease_until in conn.execute(
                "SELECT partition_id, owner, lease_until FROM eh_consumers"
                " WHERE hub = ? AND consumer_group = ? AND partition_id < ?",
                (hub, consumer_group, partitions),
            ):
                if holder is not None and lease_until > now:
                    holders[partition] = holder
            mine = _balance(holders, partitions, owner)
            conn.executemany(
                "UPDATE eh_consumers SET owner = ?, lease_until = ?, lease_s = ?"
                " WHERE hub = ? AND consumer_group = ? AND partition_id = ?",
                [(owner, now + lease_s, lease_s, hub, consumer_group, p) for p in mine],
            )
        return mine

    def release_partitions(self, hub: str, consumer_group: str, owner: str) -> None:
        """Give up every lease ``owner`` holds so others can take them at once (clean shutdown)."""
        with self._write() as conn:
            _hub_settings(conn, hub)
            conn.execute(
                "UPDATE eh_consumers SET owner = NULL, lease_until = 0"
                " WHERE hub = ? AND consumer_group = ? AND owner = ?",
                (hub, consumer_group, owner),
            )

    def read(
        self,
        hub: str,
        consumer_group: str,
        partition: int,
        *,
        max_events: int,
        owner: str,
        after_sequence: int | None = None,
    ) -> list[StoredEvent]:
        """Return up to ``max_events`` events after the group's checkpoint, oldest first.

        Reading is stateless: until the checkpoint moves, the same events come back. The
        runtime may pass ``after_sequence`` to skip events it already has in flight. Raises
        :class:`LeaseLost` unless ``owner`` holds the partition's lease.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        with self._snapshot() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            _check_partition(hub, partition, partitions)
            checkpoint = _leased_checkpoint(
                conn, hub, consumer_group, partition, owner, self._clock()
            )
            start = checkpoint if after_sequence is None else max(checkpoint, after_sequence)
            rows = conn.execute(
                "SELECT id, sequence_number, body, partition_key, properties, enqueued_time"
                " FROM eh_events WHERE hub = ? AND partition_id = ? AND sequence_number > ?"
                " ORDER BY sequence_number LIMIT ?",
                (hub, partition, start, max_events),
            ).fetchall()
            return [
                StoredEvent(
                    hub=hub,
                    partition_id=partition,
                    sequence_number=sequence,
                    offset=str(event_id),
                    body=bytes(body),
                    partition_key=key,
                    properties=json.loads(properties),
                    enqueued_time=enqueued,
                )
                for event_id, sequence, body, key, properties, enqueued in rows
            ]

    def checkpoint(
        self,
        hub: str,
        consumer_group: str,
        partition: int,
        sequence_number: int,
        *,
        owner: str,
    ) -> None:
        """Record that the group has processed ``partition`` up to ``sequence_number``.

        The checkpoint only moves forward (an older one is ignored), and only the lease holder
        may move it: anyone else gets :class:`LeaseLost`.
        """
        with self._write() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            _check_partition(hub, partition, partitions)
            now = self._clock()
            current = _leased_checkpoint(conn, hub, consumer_group, partition, owner, now)
            (last,) = conn.execute(
                "SELECT last_sequence FROM eh_partitions WHERE hub = ? AND partition_id = ?",
                (hub, partition),
            ).fetchone()
            if sequence_number > last:
                raise ValueError(
                    f"cannot checkpoint {hub}/{partition} at {sequence_number}:"
                    f" the last event is {last}"
                )
            if sequence_number <= current:
                return
            conn.execute(
                "UPDATE eh_consumers SET checkpoint = ?, checkpoint_time = ?"
                " WHERE hub = ? AND consumer_group = ? AND partition_id = ?",
                (sequence_number, now, hub, consumer_group, partition),
            )

    def hub_stats(self, hub: str, consumer_group: str) -> dict[int, PartitionStats]:
        """Return, per partition, the last sequence, the group's checkpoint and the backlog."""
        with self._snapshot() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            now = self._clock()
            rows = conn.execute(
                "SELECT p.partition_id, p.last_sequence, coalesce(c.checkpoint, -1), c.owner,"
                " coalesce(c.lease_until, 0) FROM eh_partitions AS p LEFT JOIN eh_consumers AS c"
                " ON c.hub = p.hub AND c.partition_id = p.partition_id AND c.consumer_group = ?"
                " WHERE p.hub = ? AND p.partition_id < ? ORDER BY p.partition_id",
                (consumer_group, hub, partitions),
            ).fetchall()
            return {
                partition: PartitionStats(
                    partition_id=partition,
                    last_sequence=last,
                    checkpoint=checkpoint,
                    backlog=max(0, last - checkpoint),
                    owner=holder if holder is not None and lease_until > now else None,
                    lease_until=lease_until,
                )
                for partition, last, checkpoint, holder, lease_until in rows
            }

    async def wait_for_events(self, hub: str, timeout_s: float) -> bool:
        """Sleep until an event is published to ``hub`` or ``timeout_s`` passes.

        Returns whether a publisher rang. The first call only starts listening, so an event
        published just before it is noticed at the timeout; read again after every wake.
        """
        bell = self._bell("eh", hub)
        if bell is None:
            await _sleep(max(0.0, timeout_s))
            return False
        return await bell.wait(timeout_s)

    # -- doorbells and shutdown ----------------------------------------------------------------

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

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Helpers


REPLAY_MARK: Final = ":replay:"


def replay_id(message_id: str, sequence_number: int) -> str:
    """The id a replayed dead letter is sent under: its original id (without an earlier replay
    suffix) plus ``:replay:`` and the dead letter's sequence number, at most 128 characters.
    The same dead letter always gets the same id; each dead-lettering gets a new one."""
    return f"{_original_id(message_id)}{REPLAY_MARK}{sequence_number}"[-_MAX_ID_CHARS:]


def _original_id(message_id: str) -> str:
    return message_id.partition(REPLAY_MARK)[0]


def partition_for_key(partition_key: str, partitions: int) -> int:
    """Map a partition key to a partition: a CRC-32 of its UTF-8 bytes, stable across runs."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return zlib.crc32(partition_key.encode("utf-8")) % partitions


def _balance(holders: Mapping[int, str], partitions: int, owner: str) -> list[int]:
    """Return the partitions ``owner`` should hold, given the live leases in ``holders``."""
    owned: dict[str, list[int]] = {owner: []}
    for partition in sorted(holders):
        owned.setdefault(holders[partition], []).append(partition)
    fair, extra = divmod(partitions, len(owned))
    mine = owned[owner]
    others_over = sum(1 for o, held in owned.items() if o != owner and len(held) > fair)
    target = fair + (1 if others_over < extra else 0)
    # An owner above its share keeps what it holds; others take from it when they claim.
    free = [p for p in range(partitions) if p not in holders]
    while len(mine) < target and free:
        mine.append(free.pop(0))
    while len(mine) < target:
        victim = max(
            (o for o in owned if o != owner), key=lambda o: (len(owned[o]), o), default=None
        )
        if victim is None or len(owned[victim]) <= len(mine) + 1:
            break  # taking one would only move the imbalance, not reduce it
        mine.append(owned[victim].pop())
    return sorted(mine)


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


def _encode_send(spec: SendSpec) -> str:
    """Validate one outgoing message; return its encoded properties."""
    if not isinstance(spec.body, bytes | bytearray):
        raise ValueError(f"message body must be bytes, not {type(spec.body).__name__}")
    if not isinstance(spec.message_id, str) or not 0 < len(spec.message_id) <= _MAX_ID_CHARS:
        raise ValueError(f"message_id must be 1-{_MAX_ID_CHARS} characters")
    due = spec.scheduled_enqueue_time
    if due is not None and not (isinstance(due, int | float) and math.isfinite(due)):
        raise ValueError(f"scheduled_enqueue_time must be epoch seconds, got {due!r}")
    return _encode_properties(spec.application_properties, "application")


def _encode_event(event: EventSpec) -> str:
    if not isinstance(event.body, bytes | bytearray):
        raise ValueError(f"event body must be bytes, not {type(event.body).__name__}")
    properties = _encode_properties(event.properties, "event")
    size = len(event.body) + len(properties)
    if size > EVENT_HUBS_MAX_BYTES:
        raise MessageTooLarge(f"event is {size} bytes; at most {EVENT_HUBS_MAX_BYTES}")
    return properties


def _queue_settings(conn: sqlite3.Connection, queue: str) -> _QueueSettings:
    row = conn.execute(
        "SELECT lock_duration_s, max_delivery_count, duplicate_window_s, max_message_bytes"
        " FROM sb_queues WHERE name = ?",
        (queue,),
    ).fetchone()
    if row is None:
        raise UnknownQueue(queue)
    return _QueueSettings(*row)


def _hub_settings(conn: sqlite3.Connection, hub: str) -> tuple[int, float, int]:
    row = conn.execute(
        "SELECT partitions, retention_s, next_partition FROM eh_hubs WHERE name = ?", (hub,)
    ).fetchone()
    if row is None:
        raise UnknownHub(hub)
    return int(row[0]), float(row[1]), int(row[2])


_VISIBLE: Final = "(available_at <= ? OR coalesce(available_at > ? + hold_s, 0))"
"""A scheduled or locked row that a receive would deliver, or whose deadline the clock rule
would shorten (the clock went back past it), so a receiver should come and look; two ``now``
parameters."""


def _clamp_deadlines(conn: sqlite3.Connection, queue: str, now: float) -> None:
    """The clock rule, stored: a scheduled or locked deadline further ahead than its
    ``hold_s`` (the clock went back since it was set) becomes ``now + hold_s``."""
    conn.execute(
        "UPDATE sb_messages SET available_at = ? + hold_s WHERE queue = ?"
        " AND state IN ('scheduled', 'locked') AND available_at > ? AND available_at > ? + hold_s",
        (now, queue, now, now),
    )


def _promote_due(conn: sqlite3.Connection, queue: str, now: float) -> None:
    """Make due scheduled messages and messages with expired locks ready for delivery, after
    shortening deadlines by the clock rule."""
    _clamp_deadlines(conn, queue, now)
    conn.execute(
        "UPDATE sb_messages SET state = 'ready', lock_token = NULL, lock_owner = NULL"
        " WHERE queue = ? AND state IN ('scheduled', 'locked') AND available_at <= ?",
        (queue, now),
    )


def _locked_seq(conn: sqlite3.Connection, queue: str, lock_token: str, now: float) -> int:
    """Return the sequence number of the message under a live ``lock_token`` or raise LockLost."""
    row = conn.execute(
        "SELECT seq, available_at FROM sb_messages"
        " WHERE lock_token = ? AND queue = ? AND state = 'locked'",
        (lock_token, queue),
    ).fetchone()
    if row is None:
        raise LockLost(f"lock {lock_token} on {queue!r} is not held: settled or taken over")
    if row[1] <= now:
        raise LockLost(f"lock {lock_token} on {queue!r} expired")
    return int(row[0])


def _leased_checkpoint(
    conn: sqlite3.Connection,
    hub: str,
    consumer_group: str,
    partition: int,
    owner: str,
    now: float,
) -> int:
    row = conn.execute(
        "SELECT owner, lease_until, checkpoint FROM eh_consumers"
        " WHERE hub = ? AND consumer_group = ? AND partition_id = ?",
        (hub, consumer_group, partition),
    ).fetchone()
    if row is None or row[0] != owner or row[1] <= now:
        raise LeaseLost(f"{owner!r} does not hold the lease on {hub}/{consumer_group}/{partition}")
    return int(row[2])


def _move_to_dlq(
    conn: sqlite3.Connection, seq: int, reason: str, description: str, now: float
) -> None:
    conn.execute(
        "UPDATE sb_messages SET state = 'dead', available_at = ?, lock_token = NULL,"
        " lock_owner = NULL, dlq_reason = ?, dlq_description = ?, dead_lettered_time = ?"
        " WHERE seq = ?",
        (now, reason, description, now, seq),
    )


def _dead_filter(queue: str, message_ids: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    if message_ids is None:
        return "queue = ? AND state = 'dead'", (queue,)
    if isinstance(message_ids, str):
        raise ValueError("message_ids must be a sequence of ids, not one string")
    return (
        "queue = ? AND state = 'dead' AND message_id IN (SELECT value FROM json_each(?))",
        (queue, json.dumps(list(message_ids))),
    )


def _received(
    row: Sequence[Any], lock_token: str, locked_until: float, delivery_count: int
) -> ReceivedMessage:
    """A message row as a receiver sees it; ``delivery_count`` counts the delivery being made
    (a receive) or only the past ones (a peek)."""
    return ReceivedMessage(
        queue=row[1],
        message_id=row[2],
        body=bytes(row[3]),
        correlation_id=row[4],
        subject=row[5],
        content_type=row[6],
        application_properties=json.loads(row[7]),
        delivery_count=delivery_count,
        enqueued_time=row[9],
        sequence_number=row[0],
        lock_token=lock_token,
        locked_until=locked_until,
        scheduled_enqueue_time=row[10],
    )


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(
        queue=row[1],
        message_id=row[2],
        body=bytes(row[3]),
        correlation_id=row[4],
        subject=row[5],
        content_type=row[6],
        application_properties=json.loads(row[7]),
        delivery_count=row[8],
        enqueued_time=row[9],
        sequence_number=row[0],
        reason=row[11],
        description=row[12] or "",
        dead_lettered_time=row[13],
    )


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
