"""The values that go in and out of the devhost broker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

PropertyValue = str | int | float | bool


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
    # Seconds the message may wait undelivered, from when it is enqueued (or due, when
    # scheduled); None: no expiry (Service Bus's TimeToLive).
    time_to_live_s: float | None = None


@dataclass(frozen=True)
class StoredMessage:
    """What every message read back from a queue carries: its body, system properties,
    application properties, delivery count, enqueue time and sequence number."""

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


@dataclass(frozen=True)
class ReceivedMessage(StoredMessage):
    """A message delivered under a peek-lock; settle it with its ``lock_token``."""

    lock_token: str
    locked_until: float
    scheduled_enqueue_time: float | None
    expires_at: float | None = None


@dataclass(frozen=True)
class DeadLetter(StoredMessage):
    """A message in a queue's dead-letter sub-queue, body and properties intact."""

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
    # A partition chosen by the sender (Event Hubs' send to a partition id); None: by key or
    # round-robin. Not together with a partition key.
    partition_id: int | None = None
    # The event's system properties a sender may set (EventData.message_id, correlation_id,
    # content_type); stored and returned as they came.
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None


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
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None


class PartitionInfo(NamedTuple):
    """A partition's log bounds: Event Hubs' partition properties. An empty partition has
    ``begin_sequence`` one past ``last_sequence`` and ``last_offset`` "-1"."""

    partition_id: int
    begin_sequence: int
    last_sequence: int
    last_offset: str
    last_enqueued_time: float | None


@dataclass(frozen=True)
class PartitionStats:
    """One partition as one consumer group sees it."""

    partition_id: int
    last_sequence: int
    checkpoint: int
    backlog: int
    owner: str | None
    lease_until: float
