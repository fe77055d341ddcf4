"""The broker's SQLite schema: queues and dead letters, Event Hubs logs and consumers."""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 4


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
-- rule. Receive promotes such rows to 'ready' lazily, so no timer is needed. ``expires_at`` is
-- when an undelivered message's time-to-live runs out (NULL: never). A ``deferred`` message is
-- 'scheduled' for ever (``available_at`` DEFERRED_AT) until received by sequence number.
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
    hold_s REAL,
    expires_at REAL,
    deferred INTEGER NOT NULL DEFAULT 0
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
    enqueued_time REAL NOT NULL,
    message_id TEXT,
    correlation_id TEXT,
    content_type TEXT
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


# Indexes on columns that schema 2 files gain by ALTER TABLE: created after those columns.
_SCHEMA_LATE: Final = """
CREATE INDEX IF NOT EXISTS sb_messages_expiry
    ON sb_messages (queue, expires_at) WHERE expires_at IS NOT NULL;
"""

_MESSAGE_COLUMNS: Final = (
    "seq, queue, message_id, body, correlation_id, subject, content_type, properties, "
    "delivery_count, enqueued_time, scheduled_enqueue_time"
)
