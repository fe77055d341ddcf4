"""Reading Service Bus queues without changing them: peek, counts, when the next message is due,
and waiting for one (doorbell or timer).

The scaler, the dashboard and the receivers' wait loops use these; what sends, locks and
settles messages is :mod:`devhost.broker.queues`.
"""

from __future__ import annotations

from typing import Final

from devhost.broker.db import _Database, _sleep
from devhost.broker.queues import DEFERRED_AT, _queue_settings, _received
from devhost.broker.schema import _MESSAGE_COLUMNS
from devhost.broker.values import QueueStats, ReceivedMessage

_VISIBLE: Final = "(available_at <= ? OR coalesce(available_at > ? + hold_s, 0))"
"""A scheduled or locked row that a receive would deliver, or whose deadline the clock rule
would shorten (the clock went back past it), so a receiver should come and look; two ``now``
parameters."""


class QueueReads(_Database):
    """Queries over the queues that change nothing, and the wait for a visible message."""

    def peek(
        self, queue: str, *, limit: int = 100, from_sequence: int = 0
    ) -> list[ReceivedMessage]:
        """Return up to ``limit`` live messages (ready, scheduled, deferred or locked) with a
        sequence number of at least ``from_sequence``, without locking them.

        Peeked messages carry an empty lock token: they cannot be settled, only read, as with
        Service Bus peek.
        """
        with self._snapshot() as conn:
            _queue_settings(conn, queue)
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS}, expires_at FROM sb_messages"
                " WHERE queue = ? AND state IN ('ready', 'scheduled', 'locked') AND seq >= ?"
                " ORDER BY seq LIMIT ?",
                (queue, from_sequence, max(0, limit)),
            ).fetchall()
            return [_received(row, "", 0.0, row[8], row[11]) for row in rows]

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
            # Deferred messages wait for ever: never visible by time.
            due = [float(t) for t in times if t is not None and t < DEFERRED_AT]
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
