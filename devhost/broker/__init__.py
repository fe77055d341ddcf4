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

Waiting receivers are woken across processes by the doorbells of ``devhost.broker.doorbell``; timed
polling remains the fallback.
"""

from __future__ import annotations

from devhost.broker.db import MAX_DELIVERY_COUNT_EXCEEDED
from devhost.broker.deadletters import DeadLetterOps
from devhost.broker.errors import (
    BrokerBusy,
    BrokerError,
    LeaseLost,
    LockLost,
    MessageTooLarge,
    UnknownHub,
    UnknownQueue,
)
from devhost.broker.hubs import HubOps, partition_for_key
from devhost.broker.queue_reads import QueueReads
from devhost.broker.queues import QueueOps
from devhost.broker.schema import SCHEMA_VERSION
from devhost.broker.topics import TopicOps, UnknownTopic, subscription_entity
from devhost.broker.values import (
    DeadLetter,
    EventPosition,
    EventSpec,
    PartitionInfo,
    PartitionStats,
    PropertyValue,
    QueueStats,
    ReceivedMessage,
    SendSpec,
    StoredEvent,
)
from shared.domain.messages import replay_id

__all__ = [
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "SCHEMA_VERSION",
    "Broker",
    "BrokerBusy",
    "BrokerError",
    "DeadLetter",
    "EventPosition",
    "EventSpec",
    "LeaseLost",
    "LockLost",
    "MessageTooLarge",
    "PartitionInfo",
    "PartitionStats",
    "PropertyValue",
    "QueueStats",
    "ReceivedMessage",
    "SendSpec",
    "StoredEvent",
    "UnknownHub",
    "UnknownQueue",
    "UnknownTopic",
    "partition_for_key",
    "replay_id",
    "subscription_entity",
]


class Broker(QueueOps, QueueReads, DeadLetterOps, HubOps, TopicOps):
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
