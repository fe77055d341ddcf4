"""Service Bus queues on the broker: send, receive under a lock, settle, scheduled messages.

Peeking, counting and waiting for a message are in :mod:`devhost.broker.queue_reads`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from devhost.broker.db import (
    _MAX_ID_CHARS,
    MAX_DELIVERY_COUNT_EXCEEDED,
    _check_name,
    _clip,
    _Database,
    _encode_properties,
    _QueueSettings,
)
from devhost.broker.errors import (
    LockLost,
    UnknownQueue,
)
from devhost.broker.schema import _MESSAGE_COLUMNS
from devhost.broker.values import (
    PropertyValue,
    ReceivedMessage,
    SendSpec,
)
from shared.domain.messages import SERVICE_BUS_MAX_BYTES

logger = logging.getLogger(__name__)


DEFERRED_AT: Final = 1e18
"""The ``available_at`` of a deferred message: never due (epoch seconds far beyond any clock)."""


def _encode_send(spec: SendSpec) -> str:
    """Validate one outgoing message; return its encoded properties."""
    if not isinstance(spec.body, bytes | bytearray):
        raise ValueError(f"message body must be bytes, not {type(spec.body).__name__}")
    if not isinstance(spec.message_id, str) or not 0 < len(spec.message_id) <= _MAX_ID_CHARS:
        raise ValueError(f"message_id must be 1-{_MAX_ID_CHARS} characters")
    due = spec.scheduled_enqueue_time
    if due is not None and not (isinstance(due, int | float) and math.isfinite(due)):
        raise ValueError(f"scheduled_enqueue_time must be epoch seconds, got {due!r}")
    ttl = spec.time_to_live_s
    if ttl is not None and not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"time_to_live_s must be positive seconds, got {ttl!r}")
    return _encode_properties(spec.application_properties, "application")


def _queue_settings(conn: sqlite3.Connection, queue: str) -> _QueueSettings:
    row = conn.execute(
        "SELECT lock_duration_s, max_delivery_count, duplicate_window_s, max_message_bytes"
        " FROM sb_queues WHERE name = ?",
        (queue,),
    ).fetchone()
    if row is None:
        raise UnknownQueue(queue)
    return _QueueSettings(*row)


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
    shortening deadlines by the clock rule. A deferred message whose lock expired goes back to
    being deferred; a ready message whose time-to-live has run out is removed."""
    _clamp_deadlines(conn, queue, now)
    conn.execute(
        "UPDATE sb_messages SET state = 'scheduled', available_at = ?, hold_s = NULL,"
        " lock_token = NULL, lock_owner = NULL"
        " WHERE queue = ? AND state = 'locked' AND deferred = 1 AND available_at <= ?",
        (DEFERRED_AT, queue, now),
    )
    conn.execute(
        "UPDATE sb_messages SET state = 'ready', lock_token = NULL, lock_owner = NULL"
        " WHERE queue = ? AND state IN ('scheduled', 'locked') AND available_at <= ?",
        (queue, now),
    )
    conn.execute(
        "DELETE FROM sb_messages WHERE queue = ? AND expires_at <= ? AND state = 'ready'",
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


def _stored_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The fields every message read back has, from a row in ``_MESSAGE_COLUMNS`` order."""
    return {
        "queue": row[1],
        "message_id": row[2],
        "body": bytes(row[3]),
        "correlation_id": row[4],
        "subject": row[5],
        "content_type": row[6],
        "application_properties": json.loads(row[7]),
        "delivery_count": row[8],
        "enqueued_time": row[9],
        "sequence_number": row[0],
    }


def _received(
    row: Sequence[Any],
    lock_token: str,
    locked_until: float,
    delivery_count: int,
    expires_at: float | None = None,
) -> ReceivedMessage:
    """A message row as a receiver sees it; ``delivery_count`` counts the delivery being made
    (a receive) or only the past ones (a peek)."""
    return ReceivedMessage(
        **{**_stored_fields(row), "delivery_count": delivery_count},
        lock_token=lock_token,
        locked_until=locked_until,
        scheduled_enqueue_time=row[10],
        expires_at=expires_at,
    )


def _move_to_dlq(
    conn: sqlite3.Connection, seq: int, reason: str, description: str, now: float
) -> None:
    conn.execute(
        "UPDATE sb_messages SET state = 'dead', available_at = ?, lock_token = NULL,"
        " lock_owner = NULL, dlq_reason = ?, dlq_description = ?, dead_lettered_time = ?"
        " WHERE seq = ?",
        (now, reason, description, now, seq),
    )


class QueueOps(_Database):
    """Service Bus queue operations of :class:`~devhost.broker.Broker`."""

    _clock: Callable[[], float]

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
        return [seq is not None for seq in self.send_batch_sequenced(queue, messages)]

    def send_batch_sequenced(self, queue: str, messages: Sequence[SendSpec]) -> list[int | None]:
        """As :meth:`send_batch`, returning each stored message's sequence number (None for a
        message dropped as a duplicate): what Service Bus answers a schedule request with."""
        if not messages:
            return []
        rows = [_encode_send(spec) for spec in messages]
        accepted: list[int | None] = []
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            for spec, properties in zip(messages, rows, strict=True):
                if not self._admit(conn, queue, "queue", spec, properties, settings, now):
                    accepted.append(None)
                    continue
                due = spec.scheduled_enqueue_time
                scheduled = due is not None and due > now
                ttl = spec.time_to_live_s
                start = due if scheduled and due is not None else now
                cursor = conn.execute(
                    "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
                    " correlation_id, subject, content_type, properties, enqueued_time,"
                    " scheduled_enqueue_time, hold_s, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        None if ttl is None else start + ttl,
                    ),
                )
                accepted.append(cursor.lastrowid)
            stored = sum(seq is not None for seq in accepted)
            conn.execute(
                "UPDATE sb_queues SET sent_total = sent_total + ?,"
                " duplicates_total = duplicates_total + ? WHERE name = ?",
                (stored, len(accepted) - stored, queue),
            )
            self._prune_seen_ids(conn, now)
        if any(seq is not None for seq in accepted):
            # Also for scheduled-only sends: sleeping receivers then re-read the next due time.
            self._ring("q", queue)
        return accepted

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
                    f"SELECT {_MESSAGE_COLUMNS}, last_error, expires_at FROM sb_messages"
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
                    received.append(
                        _received(row, token, locked_until, delivery_count + 1, row[12])
                    )
        return received

    def defer(self, queue: str, lock_token: str) -> None:
        """Set a locked message aside: it is delivered again only by :meth:`receive_deferred`
        with its sequence number (Service Bus's deferral). Raises :class:`LockLost`."""
        with self._write() as conn:
            _queue_settings(conn, queue)
            seq = _locked_seq(conn, queue, lock_token, self._clock())
            conn.execute(
                "UPDATE sb_messages SET state = 'scheduled', available_at = ?, hold_s = NULL,"
                " deferred = 1, lock_token = NULL, lock_owner = NULL WHERE seq = ?",
                (DEFERRED_AT, seq),
            )

    def receive_deferred(
        self, queue: str, sequence_numbers: Sequence[int], *, owner: str = ""
    ) -> list[ReceivedMessage]:
        """Lock and return the deferred messages with these sequence numbers (those that are
        deferred and not under a live lock), in the order asked. Settling works as for
        :meth:`receive`; abandoning one, or letting its lock expire, defers it again."""
        received: list[ReceivedMessage] = []
        with self._write() as conn:
            settings = _queue_settings(conn, queue)
            now = self._clock()
            _promote_due(conn, queue, now)
            locked_until = now + settings.lock_duration_s
            for seq in sequence_numbers:
                row = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS}, expires_at FROM sb_messages WHERE seq = ?"
                    " AND queue = ? AND state = 'scheduled' AND deferred = 1",
                    (seq, queue),
                ).fetchone()
                if row is None:
                    continue
                token = str(uuid.uuid4())
                conn.execute(
                    "UPDATE sb_messages SET state = 'locked', available_at = ?, hold_s = ?,"
                    " delivery_count = delivery_count + 1, lock_token = ?, lock_owner = ?"
                    " WHERE seq = ?",
                    (locked_until, settings.lock_duration_s, token, owner, seq),
                )
                received.append(_received(row, token, locked_until, row[8] + 1, row[11]))
        return received

    def cancel_scheduled(self, queue: str, sequence_numbers: Sequence[int]) -> int:
        """Remove scheduled messages that are not yet due; return how many were removed."""
        with self._write() as conn:
            _queue_settings(conn, queue)
            now = self._clock()
            _clamp_deadlines(conn, queue, now)
            removed = 0
            for seq in sequence_numbers:
                removed += conn.execute(
                    "DELETE FROM sb_messages WHERE seq = ? AND queue = ? AND state = 'scheduled'"
                    " AND deferred = 0 AND available_at > ?",
                    (seq, queue, now),
                ).rowcount
        return removed

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
            deferred = conn.execute(
                "SELECT deferred FROM sb_messages WHERE seq = ?", (seq,)
            ).fetchone()[0]
            if delivery_count >= settings.max_delivery_count:
                _move_to_dlq(
                    conn,
                    seq,
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    description or f"abandoned on delivery {delivery_count}",
                    now,
                )
            elif deferred:
                conn.execute(
                    "UPDATE sb_messages SET state = 'scheduled', available_at = ?, hold_s = NULL,"
                    " lock_token = NULL, lock_owner = NULL, last_error = coalesce(?, last_error)"
                    " WHERE seq = ?",
                    (DEFERRED_AT, description, seq),
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
