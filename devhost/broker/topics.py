"""Service Bus topics on the broker: a send fans out to the subscriptions whose rules match.

A topic keeps the duplicate-detection window (a message id seen within it is dropped for every
subscription at once, as Service Bus does on a topic). Each subscription is an entity of its
own, ``<topic>/Subscriptions/<name>`` (the Service Bus entity path), stored as a queue: it is
received from, locked, settled and dead-lettered with the queue operations. A subscription's
rules are correlation filters: a filter matches when every property it names equals the
message's (``correlationId``, ``messageId``, ``subject``/``label``, ``contentType`` or an
application property); a subscription takes a message when any of its rules matches, and one
declared without rules takes every message (Service Bus's ``$Default`` true filter).

The fan-out is one transaction: a message is stored for every matching subscription, or (on
error) for none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from devhost.broker.db import _check_name, _Database, _QueueSettings
from devhost.broker.errors import BrokerError
from devhost.broker.queues import _encode_send
from devhost.broker.values import PropertyValue, SendSpec
from shared.domain.messages import SERVICE_BUS_MAX_BYTES

# Schema additions for topics (created by ensure_topic; files without topics lack them).
_TOPIC_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS sb_topics (
    name TEXT PRIMARY KEY,
    duplicate_window_s REAL NOT NULL,
    max_message_bytes INTEGER NOT NULL,
    sent_total INTEGER NOT NULL DEFAULT 0,
    duplicates_total INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS sb_subscriptions (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    entity TEXT NOT NULL,
    rules TEXT,
    PRIMARY KEY (topic, name)
) WITHOUT ROWID""",
)

_SYSTEM_KEYS: Final = {
    "correlationId": "correlation_id",
    "messageId": "message_id",
    "subject": "subject",
    "label": "subject",
    "contentType": "content_type",
}

CorrelationFilter = Mapping[str, PropertyValue]
"""Property name → value; every one must equal the message's for the filter to match."""


class UnknownTopic(BrokerError):
    """The topic was never declared with :meth:`Broker.ensure_topic`."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r}; declare it with ensure_topic first")
        self.topic = topic


def subscription_entity(topic: str, subscription: str) -> str:
    """The entity path a subscription is received from: ``<topic>/Subscriptions/<name>``."""
    return f"{topic}/Subscriptions/{subscription}"


@dataclass(frozen=True)
class SubscriptionInfo:
    topic: str
    name: str
    entity: str
    rules: list[dict[str, PropertyValue]] | None


def matches(rules: Sequence[CorrelationFilter] | None, spec: SendSpec) -> bool:
    """Whether a message passes a subscription's rules (any rule; None: every message)."""
    if rules is None:
        return True
    props = dict(spec.application_properties or {})
    for rule in rules:
        ok = True
        for key, wanted in rule.items():
            have = getattr(spec, _SYSTEM_KEYS[key]) if key in _SYSTEM_KEYS else props.get(key)
            if have != wanted:
                ok = False
                break
        if ok:
            return True
    return False


class TopicOps(_Database):
    """Service Bus topic operations of :class:`~devhost.broker.Broker`."""

    _clock: Callable[[], float]

    def ensure_topic(
        self,
        name: str,
        *,
        duplicate_window_s: float = 600.0,
        max_message_bytes: int = SERVICE_BUS_MAX_BYTES,
    ) -> None:
        """Declare topic ``name`` or update its settings; safe to call from every process."""
        _check_name("topic", name)
        if duplicate_window_s < 0:
            raise ValueError(f"duplicate_window_s must be >= 0, got {duplicate_window_s!r}")
        with self._write() as conn:
            for statement in _TOPIC_SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO sb_topics (name, duplicate_window_s, max_message_bytes)"
                " VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " duplicate_window_s = excluded.duplicate_window_s,"
                " max_message_bytes = excluded.max_message_bytes",
                (name, duplicate_window_s, max_message_bytes),
            )

    def ensure_subscription(
        self,
        topic: str,
        name: str,
        *,
        rules: Sequence[CorrelationFilter] | None = None,
        lock_duration_s: float = 60.0,
        max_delivery_count: int = 10,
    ) -> str:
        """Declare a subscription of ``topic`` with its correlation-filter ``rules`` (None:
        every message); return its entity path, which the queue operations receive from."""
        _check_name("subscription", name)
        entity = subscription_entity(topic, name)
        for rule in rules or ():
            for key in rule:
                if not key:
                    raise ValueError("a correlation filter names a property by a non-empty key")
        # The subscription's own entity holds no duplicate window: the topic's applies.
        self.ensure_queue(  # type: ignore[attr-defined]
            entity,
            lock_duration_s=lock_duration_s,
            max_delivery_count=max_delivery_count,
            duplicate_window_s=0,
        )
        encoded = None if rules is None else json.dumps([dict(r) for r in rules])
        with self._write() as conn:
            self._topic_settings(conn, topic)
            conn.execute(
                "INSERT INTO sb_subscriptions (topic, name, entity, rules) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (topic, name) DO UPDATE SET rules = excluded.rules",
                (topic, name, entity, encoded),
            )
        return entity

    def subscriptions(self, topic: str) -> list[SubscriptionInfo]:
        """The subscriptions of ``topic``, by name."""
        with self._snapshot() as conn:
            self._topic_settings(conn, topic)
            rows = conn.execute(
                "SELECT name, entity, rules FROM sb_subscriptions WHERE topic = ? ORDER BY name",
                (topic,),
            ).fetchall()
        return [
            SubscriptionInfo(topic, name, entity, None if rules is None else json.loads(rules))
            for name, entity, rules in rows
        ]

    def topic_totals(self, topic: str) -> tuple[int, int]:
        """(messages accepted, duplicates dropped) over the topic's life."""
        with self._snapshot() as conn:
            self._topic_settings(conn, topic)
            row = conn.execute(
                "SELECT sent_total, duplicates_total FROM sb_topics WHERE name = ?", (topic,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def send_to_topic(self, topic: str, messages: Sequence[SendSpec]) -> list[bool]:
        """Send to a topic: each message is stored for every subscription whose rules match,
        in one transaction; False for a message dropped as a duplicate id (no subscription
        gets it then). A message no subscription takes is accepted and stored nowhere."""
        if not messages:
            return []
        if any(spec.scheduled_enqueue_time is not None for spec in messages):
            raise ValueError("scheduled sends to a topic are not modelled")
        encoded = [_encode_send(spec) for spec in messages]
        accepted: list[bool] = []
        rung: set[str] = set()
        with self._write() as conn:
            settings = self._topic_settings(conn, topic)
            subscriptions = conn.execute(
                "SELECT entity, rules FROM sb_subscriptions WHERE topic = ? ORDER BY name",
                (topic,),
            ).fetchall()
            now = self._clock()
            for spec, properties in zip(messages, encoded, strict=True):
                if not self._admit(conn, topic, "topic", spec, properties, settings, now):
                    accepted.append(False)
                    continue
                accepted.append(True)
                for entity, rules in subscriptions:
                    if not matches(None if rules is None else json.loads(rules), spec):
                        continue
                    _insert(conn, entity, spec, properties, now)
                    rung.add(entity)
            stored = sum(accepted)
            conn.execute(
                "UPDATE sb_topics SET sent_total = sent_total + ?,"
                " duplicates_total = duplicates_total + ? WHERE name = ?",
                (stored, len(accepted) - stored, topic),
            )
            self._prune_seen_ids(conn, now)
        for entity in rung:
            self._ring("q", entity)
        return accepted

    def _topic_settings(self, conn: sqlite3.Connection, topic: str) -> _QueueSettings:
        try:
            row = conn.execute(
                "SELECT duplicate_window_s, max_message_bytes FROM sb_topics WHERE name = ?",
                (topic,),
            ).fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                raise UnknownTopic(topic) from None
            raise
        if row is None:
            raise UnknownTopic(topic)
        return _QueueSettings(
            lock_duration_s=0.0,
            max_delivery_count=1,
            duplicate_window_s=float(row[0]),
            max_message_bytes=int(row[1]),
        )


def _insert(
    conn: sqlite3.Connection, entity: str, spec: SendSpec, properties: str, now: float
) -> None:
    """Store one copy of a topic message on a subscription's entity, ready for delivery."""
    ttl: Any = spec.time_to_live_s
    conn.execute(
        "INSERT INTO sb_messages (queue, state, available_at, message_id, body,"
        " correlation_id, subject, content_type, properties, enqueued_time, expires_at)"
        " VALUES (?, 'ready', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entity,
            now,
            spec.message_id,
            spec.body,
            spec.correlation_id,
            spec.subject,
            spec.content_type,
            properties,
            now,
            None if ttl is None else now + ttl,
        ),
    )
    conn.execute(
        "UPDATE sb_queues SET sent_total = sent_total + 1 WHERE name = ?",
        (entity,),
    )
