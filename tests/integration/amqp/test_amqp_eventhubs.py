"""Event Hubs over AMQP: the real ``azure-eventhub`` clients against devhost's broker."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.exceptions import AuthenticationError, EventHubError

from devhost.amqp import EMULATOR_KEY
from devhost.broker import partition_for_key
from tests.integration.amqp.conftest import HUB, HUB_PARTITIONS, Devhost

# A bound on waiting for events that are already in the log; reached only when a test fails.
EVENTS_DUE_S = 30.0


def _producer(devhost: Devhost, connection_string: str | None = None) -> EventHubProducerClient:
    return EventHubProducerClient.from_connection_string(
        connection_string or devhost.connection_string, eventhub_name=HUB, retry_total=0
    )


def _collect(
    devhost: Devhost,
    count: int,
    *,
    consumer_group: str = "$Default",
    until: Callable[[list[Any]], bool] | None = None,
    **receive: Any,
) -> list[Any]:
    """Receive with EventHubConsumerClient until ``count`` events (or ``until``) arrived."""
    got: list[Any] = []
    done = threading.Event()

    def on_event(context: Any, event: Any) -> None:
        if event is None:
            return
        got.append((context.partition_id, event))
        if len(got) >= count or (until is not None and until(got)):
            done.set()

    client = EventHubConsumerClient.from_connection_string(
        devhost.connection_string, consumer_group=consumer_group, eventhub_name=HUB, retry_total=0
    )
    worker = threading.Thread(
        target=lambda: client.receive(on_event=on_event, **receive), daemon=True
    )
    worker.start()
    try:
        assert done.wait(EVENTS_DUE_S), f"received {len(got)} of {count} events"
    finally:
        client.close()
        worker.join()
    return got


def test_hub_and_partition_properties(devhost: Devhost) -> None:
    """GetEventHubProperties returns the hub's partition ids; GetPartitionProperties the
    partition's begin and last sequence numbers, last offset and emptiness
    (https://learn.microsoft.com/python/api/azure-eventhub/azure.eventhub.eventhubproducerclient#azure-eventhub-eventhubproducerclient-get-partition-properties)."""
    with _producer(devhost) as producer:
        hub = producer.get_eventhub_properties()
        assert hub["eventhub_name"] == HUB
        assert hub["partition_ids"] == [str(p) for p in range(HUB_PARTITIONS)]
        empty = producer.get_partition_properties("2")
        assert empty["is_empty"] is True
        assert empty["last_enqueued_sequence_number"] == -1
        batch = producer.create_batch(partition_id="2")
        for body in (b"a", b"b", b"c"):
            batch.add(EventData(body))
        producer.send_batch(batch)
        full = producer.get_partition_properties("2")
    assert (full["id"], full["is_empty"]) == ("2", False)
    assert (full["beginning_sequence_number"], full["last_enqueued_sequence_number"]) == (0, 2)
    info = devhost.broker.partition_info(HUB, 2)
    assert full["last_enqueued_offset"] == info.last_offset


def test_send_to_partition_key_and_round_robin(devhost: Devhost) -> None:
    """Events for one partition key land on one partition in order; events sent to a partition
    id land there; events with neither are spread over the partitions
    (https://learn.microsoft.com/azure/event-hubs/event-hubs-features#mapping-of-events-to-partitions)."""
    with _producer(devhost) as producer:
        keyed = producer.create_batch(partition_key="customer-7")
        for i in range(3):
            event = EventData(f"k{i}")
            event.properties = {"i": i}
            keyed.add(event)
        producer.send_batch(keyed)
        pinned = producer.create_batch(partition_id="3")
        pinned.add(EventData("pinned"))
        producer.send_batch(pinned)
        spread = producer.create_batch()
        for i in range(HUB_PARTITIONS):
            spread.add(EventData(f"r{i}"))
        producer.send_batch(spread)
        producer.send_event(EventData("single"))
    key_partition = partition_for_key("customer-7", HUB_PARTITIONS)
    keyed_events = devhost.broker.read_partition(
        HUB, key_partition, after_sequence=-1, max_events=99
    )
    assert [e.body for e in keyed_events][:3] == [b"k0", b"k1", b"k2"]
    assert [e.partition_key for e in keyed_events[:3]] == ["customer-7"] * 3
    assert [e.properties for e in keyed_events[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert b"pinned" in [
        e.body for e in devhost.broker.read_partition(HUB, 3, after_sequence=-1, max_events=99)
    ]
    stats = devhost.broker.hub_stats(HUB, "$Default")
    assert sum(s.last_sequence + 1 for s in stats.values()) == 3 + 1 + HUB_PARTITIONS + 1
    assert all(s.last_sequence >= 0 for s in stats.values())  # round-robin reached every one


def test_receive_from_start_sequence_offset_time_and_latest(devhost: Devhost) -> None:
    """A consumer starts at the beginning ("-1"), after or at a sequence number, after an
    offset, at an enqueued time, or at the end ("@latest")
    (https://learn.microsoft.com/python/api/azure-eventhub/azure.eventhub.eventhubconsumerclient#azure-eventhub-eventhubconsumerclient-receive)."""
    with _producer(devhost) as producer:
        for body in ("e0", "e1", "e2"):
            producer.send_batch([EventData(body)], partition_id="0")
        devhost.clock.advance(60)
        marker = datetime.datetime.fromtimestamp(devhost.clock() - 1, datetime.UTC)
        producer.send_batch([EventData("e3")], partition_id="0")

        def bodies(events: list[Any]) -> list[str]:
            return [event.body_as_str() for _, event in events]

        third = devhost.broker.read_partition(HUB, 0, after_sequence=-1, max_events=3)[2]
        positions: dict[str, dict[str, Any]] = {
            "start": {"starting_position": "-1"},
            "after 1": {"starting_position": 1},
            "at 1": {"starting_position": 1, "starting_position_inclusive": True},
            "after offset": {"starting_position": third.offset},
            "at time": {"starting_position": marker},
        }
        expected = {
            "start": ["e0", "e1", "e2", "e3"],
            "after 1": ["e2", "e3"],
            "at 1": ["e1", "e2", "e3"],
            "after offset": ["e3"],
            "at time": ["e3"],
        }
        # Independent readers of one partition, one after the other: five SDK clients
        # connecting at once on a loaded machine sometimes left one without events.
        results = {
            name: _collect(devhost, len(expected[name]), partition_id="0", **position)
            for name, position in positions.items()
        }
        assert {name: bodies(got) for name, got in results.items()} == expected
        assert [e.sequence_number for _, e in results["start"]] == [0, 1, 2, 3]
        # "@latest": only what is sent once the consumer is reading. The server registers
        # the consumer (and fixes its start) at attach, so sending after that is ordered.
        got: list[Any] = []
        arrived = threading.Event()
        client = EventHubConsumerClient.from_connection_string(
            devhost.connection_string, consumer_group="$Default", eventhub_name=HUB
        )
        worker = threading.Thread(
            target=lambda: client.receive(
                on_event=lambda c, e: (got.append(e), arrived.set()),
                partition_id="0",
                starting_position="@latest",
            ),
            daemon=True,
        )
        worker.start()
        try:
            assert _wait_for(lambda: _consumers(devhost) > 0)
            producer.send_batch([EventData("new")], partition_id="0")
            assert arrived.wait(EVENTS_DUE_S)
        finally:
            client.close()
            worker.join()
        assert [e.body_as_str() for e in got] == ["new"]


def _consumers(devhost: Devhost) -> int:
    """Consumer links the server has attached (and positioned) on the hub."""
    from devhost.amqp.eventhubs import EventHubsProtocol

    (protocol,) = [p for p in devhost.server.handler.protocols if isinstance(p, EventHubsProtocol)]
    return len(protocol.consumers.get(HUB, []))


def _wait_for(condition: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(int(EVENTS_DUE_S / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


def test_last_enqueued_event_properties_are_tracked(devhost: Devhost) -> None:
    """With track_last_enqueued_event_properties each event carries the partition's last
    enqueued sequence number and offset (PartitionContext.last_enqueued_event_properties,
    https://learn.microsoft.com/python/api/azure-eventhub/azure.eventhub.partitioncontext)."""
    with _producer(devhost) as producer:
        producer.send_batch([EventData(f"t{i}") for i in range(3)], partition_id="2")
    (first, *_) = _collect(
        devhost,
        3,
        partition_id="2",
        starting_position="-1",
        track_last_enqueued_event_properties=True,
    )
    from azure.eventhub._utils import get_last_enqueued_event_properties

    last = get_last_enqueued_event_properties(first[1])
    assert last is not None
    assert (last["sequence_number"], last["offset"]) == (
        2,
        devhost.broker.partition_info(HUB, 2).last_offset,
    )


def test_consumer_groups_read_independently(devhost: Devhost) -> None:
    """Each consumer group has its own view of the stream
    (https://learn.microsoft.com/azure/event-hubs/event-hubs-features#consumer-groups)."""
    with _producer(devhost) as producer:
        producer.send_batch([EventData(f"g{i}") for i in range(3)], partition_id="1")
    for group in ("$Default", "analytics"):
        got = _collect(devhost, 3, consumer_group=group, partition_id="1", starting_position="-1")
        assert [e.body_as_str() for _, e in got] == ["g0", "g1", "g2"]


def test_an_events_system_and_application_properties_reach_the_receiver(
    devhost: Devhost,
) -> None:
    """What the sender set on an ``EventData`` — message id, content type, correlation id,
    application properties — the receiver reads back, in a batch and as a single event
    (https://learn.microsoft.com/python/api/azure-eventhub/azure.eventhub.eventdata: the
    ``message_id``, ``content_type``, ``correlation_id`` and ``properties`` of an event)."""
    sent = []
    for i in range(2):
        event = EventData(f"e{i}")
        event.message_id = f"m-{i}"
        event.content_type = "application/json"
        event.correlation_id = f"c-{i}"
        event.properties = {"attempt": i, "channel": "chat", "urgent": i == 1, "score": 0.5}
        sent.append(event)
    with _producer(devhost) as producer:
        producer.send_batch(sent[:1], partition_id="1")
        producer.send_event(sent[1], partition_id="1")
        producer.send_event(EventData("bare"), partition_id="1")
    got = [event for _, event in _collect(devhost, 3, starting_position="-1", partition_id="1")]
    assert [e.body_as_str() for e in got] == ["e0", "e1", "bare"]
    assert [(e.message_id, e.content_type, e.correlation_id) for e in got] == [
        ("m-0", "application/json", "c-0"),
        ("m-1", "application/json", "c-1"),
        (None, None, None),
    ]
    assert [e.properties for e in got] == [
        {b"attempt": 0, b"channel": b"chat", b"urgent": False, b"score": 0.5},
        {b"attempt": 1, b"channel": b"chat", b"urgent": True, b"score": 0.5},
        {},
    ]
    stored = devhost.broker.read_partition(HUB, 1, after_sequence=-1, max_events=9)
    assert [e.message_id for e in stored] == ["m-0", "m-1", None]


def test_devhost_events_and_sdk_events_share_the_log(devhost: Devhost) -> None:
    """What devhost publishes (another process on the broker file) the SDK consumer reads,
    and what the SDK producer sends devhost's own leased readers (the ingest workers) read."""
    worker = devhost.other_process()
    try:
        worker.publish(HUB, b"from devhost", partition_key="p")
        (got,) = _collect(devhost, 1, starting_position="-1")
        assert got[1].body_as_str() == "from devhost"
        assert got[1].partition_key == b"p"
        with _producer(devhost) as producer:
            producer.send_batch([EventData(b"from the sdk")], partition_id="2")
        assert worker.claim_partitions(HUB, "switchboard", "ingest-1") == list(
            range(HUB_PARTITIONS)
        )
        events = worker.read(HUB, "switchboard", 2, max_events=10, owner="ingest-1")
        assert [e.body for e in events] == [b"from the sdk"]
    finally:
        worker.close()


def test_a_higher_owner_level_takes_the_partition(devhost: Devhost) -> None:
    """A receiver with a higher owner level (epoch) disconnects the others on that partition
    and consumer group; a lower one cannot open it
    (https://learn.microsoft.com/azure/event-hubs/event-hubs-event-processor-host#epoch)."""
    with _producer(devhost) as producer:
        producer.send_batch([EventData("x")], partition_id="0")
    errors: list[BaseException] = []

    def on_error(context: Any, error: BaseException) -> None:
        errors.append(error)

    low = EventHubConsumerClient.from_connection_string(
        devhost.connection_string, consumer_group="$Default", eventhub_name=HUB, retry_total=0
    )
    got_low = threading.Event()
    low_thread = threading.Thread(
        target=lambda: low.receive(
            on_event=lambda c, e: got_low.set(),
            on_error=on_error,
            partition_id="0",
            owner_level=1,
            starting_position="-1",
        ),
        daemon=True,
    )
    low_thread.start()
    try:
        assert got_low.wait(EVENTS_DUE_S)
        high = _collect(devhost, 1, partition_id="0", owner_level=2, starting_position="-1")
        assert high[0][1].body_as_str() == "x"
    finally:
        low.close()
        low_thread.join()
    assert any("stolen" in str(error) or "owner level" in str(error) for error in errors), errors


def test_event_hubs_tokens_are_verified(devhost: Devhost) -> None:
    """A wrong key is refused for sends and for management requests
    (https://learn.microsoft.com/azure/event-hubs/authenticate-shared-access-signature)."""
    wrong = devhost.connection_string.replace(EMULATOR_KEY, "wrong")
    with _producer(devhost, wrong) as producer:
        with pytest.raises(AuthenticationError):
            producer.send_batch([EventData("forged")])
        with pytest.raises(EventHubError):
            producer.get_eventhub_properties()
    assert all(s.last_sequence == -1 for s in devhost.broker.hub_stats(HUB, "$Default").values())
