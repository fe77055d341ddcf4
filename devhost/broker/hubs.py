"""Event Hubs on the broker: a partitioned append log, leases and checkpoints per consumer group."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
import zlib
from collections.abc import Callable, Mapping, Sequence

from devhost.broker.db import (
    _EVENT_PRUNE_BATCH,
    _EVENT_PRUNE_INTERVAL_S,
    _check_name,
    _check_partition,
    _Database,
    _encode_properties,
    _sleep,
)
from devhost.broker.errors import (
    BrokerError,
    LeaseLost,
    MessageTooLarge,
    UnknownHub,
)
from devhost.broker.values import (
    EventPosition,
    EventSpec,
    PartitionInfo,
    PartitionStats,
    PropertyValue,
    StoredEvent,
)
from shared.domain.messages import EVENT_HUBS_MAX_BYTES

logger = logging.getLogger(__name__)


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


def _encode_event(event: EventSpec) -> str:
    if not isinstance(event.body, bytes | bytearray):
        raise ValueError(f"event body must be bytes, not {type(event.body).__name__}")
    properties = _encode_properties(event.properties, "event")
    system = (event.message_id, event.correlation_id, event.content_type)
    size = len(event.body) + len(properties) + sum(len(v.encode()) for v in system if v)
    if size > EVENT_HUBS_MAX_BYTES:
        raise MessageTooLarge(f"event is {size} bytes; at most {EVENT_HUBS_MAX_BYTES}")
    return properties


def _hub_settings(conn: sqlite3.Connection, hub: str) -> tuple[int, float, int]:
    row = conn.execute(
        "SELECT partitions, retention_s, next_partition FROM eh_hubs WHERE name = ?", (hub,)
    ).fetchone()
    if row is None:
        raise UnknownHub(hub)
    return int(row[0]), float(row[1]), int(row[2])


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


class HubOps(_Database):
    """Event Hubs operations of :class:`~devhost.broker.Broker`."""

    _clock: Callable[[], float]

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
                if event.partition_id is not None:
                    if event.partition_key is not None:
                        raise ValueError("an event goes by partition id or by key, not both")
                    _check_partition(hub, event.partition_id, partitions)
                    partition = event.partition_id
                elif event.partition_key is not None:
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
                    " partition_key, properties, enqueued_time, message_id, correlation_id,"
                    " content_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        hub,
                        partition,
                        sequence,
                        event.body,
                        event.partition_key,
                        properties,
                        now,
                        event.message_id,
                        event.correlation_id,
                        event.content_type,
                    ),
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

    def hubs(self) -> dict[str, int]:
        """Every declared event hub and its partition count."""
        with self._snapshot() as conn:
            rows = conn.execute("SELECT name, partitions FROM eh_hubs ORDER BY name").fetchall()
        return {str(name): int(partitions) for name, partitions in rows}

    def partition_info(self, hub: str, partition: int) -> PartitionInfo:
        """The bounds of one partition's log (what is still retained of it)."""
        with self._snapshot() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            _check_partition(hub, partition, partitions)
            (last,) = conn.execute(
                "SELECT last_sequence FROM eh_partitions WHERE hub = ? AND partition_id = ?",
                (hub, partition),
            ).fetchone()
            first = conn.execute(
                "SELECT min(sequence_number) FROM eh_events WHERE hub = ? AND partition_id = ?",
                (hub, partition),
            ).fetchone()[0]
            row = conn.execute(
                "SELECT id, enqueued_time FROM eh_events WHERE hub = ? AND partition_id = ?"
                " AND sequence_number = ?",
                (hub, partition, last),
            ).fetchone()
        return PartitionInfo(
            partition_id=partition,
            begin_sequence=int(first) if first is not None else last + 1,
            last_sequence=int(last),
            last_offset=str(row[0]) if row else "-1",
            last_enqueued_time=float(row[1]) if row else None,
        )

    def sequence_after(
        self,
        hub: str,
        partition: int,
        *,
        offset: int | None = None,
        enqueued_time: float | None = None,
        inclusive: bool = False,
    ) -> int:
        """The sequence number a reader starting at an offset or an enqueued time reads after:
        one before the first event whose offset (or enqueued time) is greater than the value
        (or equal, when ``inclusive``); the partition's last sequence when there is none."""
        if (offset is None) == (enqueued_time is None):
            raise ValueError("give exactly one of offset and enqueued_time")
        column, value = ("id", offset) if offset is not None else ("enqueued_time", enqueued_time)
        operator = ">=" if inclusive else ">"
        with self._snapshot() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            _check_partition(hub, partition, partitions)
            first = conn.execute(
                f"SELECT min(sequence_number) FROM eh_events WHERE hub = ? AND partition_id = ?"
                f" AND {column} {operator} ?",
                (hub, partition, value),
            ).fetchone()[0]
            if first is not None:
                return int(first) - 1
            (last,) = conn.execute(
                "SELECT last_sequence FROM eh_partitions WHERE hub = ? AND partition_id = ?",
                (hub, partition),
            ).fetchone()
            return int(last)

    def read_partition(
        self, hub: str, partition: int, *, after_sequence: int, max_events: int
    ) -> list[StoredEvent]:
        """Up to ``max_events`` events of a partition after ``after_sequence``, oldest first,
        for a reader that keeps its own position (an Event Hubs consumer link): no lease."""
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        with self._snapshot() as conn:
            partitions, _, _ = _hub_settings(conn, hub)
            _check_partition(hub, partition, partitions)
            return _events_after(conn, hub, partition, after_sequence, max_events)

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
            return _events_after(conn, hub, partition, start, max_events)

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


def _events_after(
    conn: sqlite3.Connection, hub: str, partition: int, after: int, limit: int
) -> list[StoredEvent]:
    """Up to ``limit`` events of a partition after sequence number ``after``, oldest first."""
    rows = conn.execute(
        "SELECT id, sequence_number, body, partition_key, properties, enqueued_time,"
        " message_id, correlation_id, content_type FROM eh_events"
        " WHERE hub = ? AND partition_id = ? AND sequence_number > ?"
        " ORDER BY sequence_number LIMIT ?",
        (hub, partition, after, limit),
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
            message_id=message_id,
            correlation_id=correlation_id,
            content_type=content_type,
        )
        for (
            event_id,
            sequence,
            body,
            key,
            properties,
            enqueued,
            message_id,
            correlation_id,
            content_type,
        ) in rows
    ]
