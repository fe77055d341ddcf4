"""The devhost ``BrokerPublisher`` refuses what Service Bus would refuse, with the same check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devhost.broker import Broker, MessageTooLarge
from devhost.broker.publisher import BrokerPublisher
from shared.domain.messages import (
    MAX_HEADER_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    SERVICE_BUS_MAX_BYTES,
    check_message_size,
    estimate_message_size,
)
from shared.errors import ConfigError, OversizeMessage
from shared.ports import OutboundMessage

QUEUE = "intent"
PROPERTIES = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "revision": 2}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.db") as opened:
        opened.ensure_queue(QUEUE)
        yield opened


@pytest.fixture
async def publisher(broker: Broker) -> AsyncIterator[BrokerPublisher]:
    sender = BrokerPublisher(broker)
    yield sender
    await sender.close()


def message(body: bytes, **fields: object) -> OutboundMessage:
    defaults: dict[str, object] = {
        "queue": QUEUE,
        "message_id": "conv-1:intent:0",
        "correlation_id": "conv-1",
        "subject": "intent",
        "application_properties": PROPERTIES,
    }
    return OutboundMessage(body=body, **{**defaults, **fields})  # type: ignore[arg-type]


async def test_a_body_just_under_the_limit_plus_properties_is_refused_before_sending(
    broker: Broker, publisher: BrokerPublisher
) -> None:
    body = b"a" * (SERVICE_BUS_MAX_BYTES - 200)  # under the limit on its own
    with pytest.raises(OversizeMessage, match=str(SERVICE_BUS_MAX_BYTES)) as caught:
        await publisher.send(message(body))

    assert not isinstance(caught.value, MessageTooLarge)  # refused by the check, not the broker
    assert broker.peek(QUEUE) == []
    assert broker.queue_stats()[QUEUE].sent_total == 0


async def test_the_largest_message_the_check_allows_is_sent_with_its_properties(
    broker: Broker, publisher: BrokerPublisher
) -> None:
    room = SERVICE_BUS_MAX_BYTES - estimate_message_size(message(b""))
    largest = message(b"a" * room)
    assert check_message_size(largest) == SERVICE_BUS_MAX_BYTES

    await publisher.send(largest)

    [sent] = broker.peek(QUEUE)
    assert len(sent.body) == room
    assert sent.application_properties == PROPERTIES
    with pytest.raises(OversizeMessage):
        await publisher.send(message(b"a" * (room + 1), message_id="conv-1:intent:1"))


async def test_properties_over_the_header_limit_are_refused_even_with_a_small_body(
    broker: Broker, publisher: BrokerPublisher
) -> None:
    bulky = {f"p{n}": "v" * 1000 for n in range(70)}  # ~70 KB: the queue itself would take it

    with pytest.raises(OversizeMessage, match=str(MAX_HEADER_BYTES)):
        await publisher.send(message(b"{}", application_properties=bulky))

    assert broker.peek(QUEUE) == []


async def test_a_smaller_tier_limit_is_applied_to_the_whole_message(broker: Broker) -> None:
    small = BrokerPublisher(broker, max_message_bytes=4096)
    try:
        body = b"a" * 3500  # fits 4096 alone, not with the properties and framing
        with pytest.raises(OversizeMessage, match="4096"):
            await small.send(message(body))
        await small.send(message(b"a" * 1000))
    finally:
        await small.close()
    assert [len(m.body) for m in broker.peek(QUEUE)] == [1000]


def test_a_limit_no_message_can_meet_is_a_config_error(broker: Broker) -> None:
    with pytest.raises(ConfigError, match="max_message_bytes"):
        BrokerPublisher(broker, max_message_bytes=MESSAGE_OVERHEAD_BYTES)
