"""The Event Hubs request producer: events it builds, how it batches, what it refuses.

No local server speaks Event Hubs, so batching runs against the SDK's real ``EventDataBatch``
offline, with a recording hub in place of the network; the only connection attempt goes to a
closed loopback port.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.eventhub import EventData, EventDataBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.azure.eventhub_producer import (
    EventHubRequestProducer,
    OversizeEvents,
    build_event,
    estimate_event_size,
    partition_key_of,
    send_in_batches,
)
from shared.errors import InvalidInput, OversizeMessage, TransientError


class RecordingBatch(EventDataBatch):
    """A real ``EventDataBatch`` that also remembers what it accepted."""

    def __init__(self, max_size_in_bytes: int, partition_key: str) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes, partition_key=partition_key)
        self.key = partition_key
        self.accepted: list[EventData] = []

    def add(self, event_data: Any) -> None:
        super().add(event_data)
        self.accepted.append(event_data)


class RecordingHub:
    """Stands in for the network side: makes batches with a size limit and records sends."""

    def __init__(self, batch_bytes: int = 1024 * 1024, fail_on_send: int | None = None) -> None:
        self.batch_bytes = batch_bytes
        self.fail_on_send = fail_on_send
        self.sent: list[tuple[str, list[dict[str, Any]]]] = []

    async def create_batch(self, key: str) -> EventDataBatch:
        return RecordingBatch(self.batch_bytes, key)

    async def send_batch(self, batch: EventDataBatch) -> None:
        assert isinstance(batch, RecordingBatch)
        if self.fail_on_send is not None and len(self.sent) + 1 == self.fail_on_send:
            raise TransientError("event hub requests: ConnectionLostError")
        self.sent.append((batch.key, [json.loads(e.body_as_str()) for e in batch.accepted]))

    def sent_texts(self) -> list[str]:
        return [request["text"] for _, requests in self.sent for request in requests]


def request(customer: str, text: str, **extra: object) -> dict[str, object]:
    return {"customerId": customer, "text": text, "channel": "chat", **extra}


def test_an_event_carries_the_request_as_json() -> None:
    original = request("c-1", 'Où est ma commande? "#123"', idempotencyKey="k-1")

    event = build_event(original)

    assert json.loads(event.body_as_str()) == original
    assert event.content_type == "application/json"


@pytest.mark.parametrize(
    "bad",
    [{"customerId": "c", "score": math.nan}, {"customerId": "c", "tags": {1, 2}}, ["not", "a"]],
    ids=["nan", "set", "list"],
)
def test_requests_that_are_not_json_objects_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        build_event(bad)


def test_the_partition_key_is_the_customer_id_in_either_spelling() -> None:
    assert partition_key_of({"customerId": "c-1"}) == "c-1"
    assert partition_key_of({"customer_id": "c-2"}) == "c-2"
    with pytest.raises(InvalidInput, match="customerId"):
        partition_key_of({"text": "hello"})


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=3000), customer=st.text(min_size=1, max_size=64))
def test_the_size_estimate_never_undercounts_the_sdk_encoding(text: str, customer: str) -> None:
    event = build_event(request(customer, text))
    batch = EventDataBatch(max_size_in_bytes=4 * 1024 * 1024, partition_key=customer)
    empty = batch.size_in_bytes
    batch.add(event)

    body = b"".join(event.body)
    assert estimate_event_size(body) >= batch.size_in_bytes - empty


async def test_requests_are_batched_per_customer_in_order() -> None:
    hub = RecordingHub()
    requests = [request("alice", "a1"), request("bob", "b1"), request("alice", "a2")]

    sent = await send_in_batches(requests, create_batch=hub.create_batch, send_batch=hub.send_batch)

    assert sent == 3
    by_key = {key: [r["text"] for r in batch] for key, batch in hub.sent}
    assert by_key == {"alice": ["a1", "a2"], "bob": ["b1"]}


async def test_a_full_batch_is_sent_and_a_new_one_started_without_losing_events() -> None:
    hub = RecordingHub(batch_bytes=2048)
    requests = [request("alice", f"{n}:" + "x" * 300) for n in range(12)]

    sent = await send_in_batches(requests, create_batch=hub.create_batch, send_batch=hub.send_batch)

    assert sent == 12
    assert len(hub.sent) > 1
    assert [t.split(":")[0] for t in hub.sent_texts()] == [str(n) for n in range(12)]


async def test_an_oversize_request_is_refused_and_the_others_are_still_sent() -> None:
    hub = RecordingHub()
    requests = [
        request("alice", "small-1"),
        request("bob", "y" * 5000),
        request("carol", "small-2"),
    ]

    with pytest.raises(OversizeEvents) as caught:
        await send_in_batches(
            requests,
            create_batch=hub.create_batch,
            send_batch=hub.send_batch,
            max_event_bytes=4096,
        )

    assert isinstance(caught.value, OversizeMessage)
    assert caught.value.rejected == (1,)
    assert caught.value.sent == 2
    assert "4096" in str(caught.value)
    assert sorted(hub.sent_texts()) == ["small-1", "small-2"]


async def test_an_event_the_hub_itself_refuses_is_reported_as_oversize() -> None:
    hub = RecordingHub(batch_bytes=1500)
    requests = [request("alice", "fits"), request("alice", "z" * 2000)]

    with pytest.raises(OversizeEvents) as caught:
        await send_in_batches(requests, create_batch=hub.create_batch, send_batch=hub.send_batch)

    assert caught.value.rejected == (1,)
    assert hub.sent_texts() == ["fits"]


async def test_one_invalid_request_stops_the_call_before_anything_is_sent() -> None:
    hub = RecordingHub()
    requests: list[Any] = [request("alice", "ok"), {"text": "no customer"}, "not a dict"]

    with pytest.raises(InvalidInput) as caught:
        await send_in_batches(requests, create_batch=hub.create_batch, send_batch=hub.send_batch)

    assert "#1" in str(caught.value)
    assert "#2" in str(caught.value)
    assert hub.sent == []


async def test_a_transient_failure_says_how_many_were_already_sent() -> None:
    hub = RecordingHub(fail_on_send=2)
    requests = [request("alice", "a"), request("bob", "b"), request("carol", "c")]

    with pytest.raises(TransientError, match="after 1 of 3"):
        await send_in_batches(requests, create_batch=hub.create_batch, send_batch=hub.send_batch)

    assert hub.sent_texts() == ["a"]


def offline_producer() -> EventHubRequestProducer:
    return EventHubRequestProducer(
        "127.0.0.1",
        "requests",
        credential=AzureNamedKeyCredential("RootManageSharedAccessKey", "a2V5"),
        retry_total=0,
    )


async def test_the_producer_sends_nothing_and_connects_to_nothing_for_no_requests() -> None:
    producer = offline_producer()
    try:
        assert await producer.send_requests([]) == 0
    finally:
        await producer.close()


async def test_the_producer_maps_a_connection_failure_to_a_transient_error() -> None:
    producer = offline_producer()
    try:
        with pytest.raises(TransientError, match="requests"):
            await producer.send_requests([request("alice", "hello")])
    finally:
        await producer.close()


async def test_a_closed_producer_refuses_to_send() -> None:
    producer = offline_producer()
    await producer.close()

    with pytest.raises(RuntimeError, match="closed"):
        await producer.send_requests([request("alice", "hello")])
