"""Dead letters on the broker: list, park, replay (under new ids) and purge."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from devhost.broker.db import (
    _clip,
    _Database,
)
from devhost.broker.queues import (
    _clamp_deadlines,
    _locked_seq,
    _move_to_dlq,
    _queue_settings,
    _stored_fields,
)
from devhost.broker.schema import _MESSAGE_COLUMNS
from devhost.broker.values import (
    DeadLetter,
)
from shared.domain.messages import original_message_id as _original_id
from shared.domain.messages import replay_id

logger = logging.getLogger(__name__)


def _dead_filter(queue: str, message_ids: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    if message_ids is None:
        return "queue = ? AND state = 'dead'", (queue,)
    if isinstance(message_ids, str):
        raise ValueError("message_ids must be a sequence of ids, not one string")
    return (
        "queue = ? AND state = 'dead' AND message_id IN (SELECT value FROM json_each(?))",
        (queue, json.dumps(list(message_ids))),
    )


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(
        **_stored_fields(row),
        reason=row[11],
        description=row[12] or "",
        dead_lettered_time=row[13],
    )


class DeadLetterOps(_Database):
    """Dead-letter operations of :class:`~devhost.broker.Broker`."""

    _clock: Callable[[], float]

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

    def deadletters(
        self, queue: str, *, limit: int = 100, from_sequence: int = 0
    ) -> list[DeadLetter]:
        """Return up to ``limit`` dead-lettered messages of ``queue`` with a sequence number of
        at least ``from_sequence``, oldest sequence first."""
        with self._snapshot() as conn:
            _queue_settings(conn, queue)
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS}, dlq_reason, dlq_description, dead_lettered_time"
                " FROM sb_messages WHERE queue = ? AND state = 'dead' AND seq >= ?"
                " ORDER BY seq LIMIT ?",
                (queue, from_sequence, max(0, limit)),
            ).fetchall()
            return [_dead_letter(row) for row in rows]

    def remove_deadletter(self, queue: str, sequence_number: int) -> bool:
        """Delete one dead letter by its sequence number (completing it in the dead-letter
        queue); False when it is not there (already removed or replayed)."""
        with self._write() as conn:
            _queue_settings(conn, queue)
            removed = conn.execute(
                "DELETE FROM sb_messages WHERE seq = ? AND queue = ? AND state = 'dead'",
                (sequence_number, queue),
            ).rowcount
        return removed == 1

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
            for seq, message_id, body, correlation_id, content_type, properties in _parked(
                conn, parking, now
            ):
                props = json.loads(properties)
                original = str(props.get("OriginalMessageId", message_id))
                if wanted is not None and original not in wanted:
                    continue
                target = _return_queue(props, declared, parking, original)
                if target is None:
                    continue
                new_id = replay_id(original, seq)
                replayed = _replay_properties(original)
                if self._remember_id(conn, target, new_id, _queue_settings(conn, target), now):
                    conn.execute(
                        "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
                        " correlation_id, subject, content_type, properties, enqueued_time,"
                        " scheduled_enqueue_time) VALUES (?, 'ready', ?, ?, ?, ?, NULL, ?, ?, ?,"
                        " NULL)",
                        (target, now, new_id, body, correlation_id, content_type, replayed, now),
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


def _parked(conn: sqlite3.Connection, parking: str, now: float) -> list[Any]:
    """The parking queue's messages a replay may move: any not under a live lock."""
    return conn.execute(
        "SELECT seq, message_id, body, correlation_id, content_type, properties"
        " FROM sb_messages WHERE queue = ? AND (state IN ('ready', 'scheduled', 'dead')"
        " OR (state = 'locked' AND available_at <= ?)) ORDER BY seq",
        (parking, now),
    ).fetchall()


def _return_queue(
    props: dict[str, Any], declared: set[str], parking: str, original: str
) -> str | None:
    """The declared queue a parked message came from (its ``OriginalQueue``), or None (logged)."""
    target = props.get("OriginalQueue")
    if not isinstance(target, str) or target not in declared or target == parking:
        logger.warning(
            "parked message %s has no queue to return to (OriginalQueue %r)", original, target
        )
        return None
    return target


def _replay_properties(original: str) -> str:
    """A replayed parked message's application properties: the id it was first sent under."""
    return json.dumps({"OriginalMessageId": _original_id(original)}, separators=(",", ":"))
