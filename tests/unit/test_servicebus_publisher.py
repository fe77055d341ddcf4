"""The Service Bus publisher: the SDK messages it builds and the size check before sending.

No local server speaks AMQP to Service Bus, so these tests use the SDK's real message and batch
types offline; the only connection attempts go to a closed loopback port.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.servicebus import ServiceBusMessageBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.azure.servicebus_publisher import (
    ServiceBusPublisher,
    build_service_bus_message,
)
from shared.config import Settings
from shared.domain.messages import (
    MAX_HEADER_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    SERVICE_BUS_MAX_BYTES,
    check_message_size,
    estimate_message_size,
)
from shared.errors import ConfigError, InvalidInput, OversizeMessage, TransientError
from shared.ports import OutboundMessage

# A namespace on loopback where nothing listens on the AMQPS port: a connection attempt fails
# at once, so a test can tell "raised before connecting" from "tried to connect".
UNREACHABLE_NAMESPACE = "127.0.0.1"


def message(body: bytes = b'{"x":1}', **fields: object) -> OutboundMessage:
    defaults: dict[str, object] = {
        "queue": "intent",
        "message_id": "conv-1:intent:0",
        "correlation_id": "conv-1",
    }
    return OutboundMessage(body=body, **{**defaults, **fields})  # type: ignore[arg-type]


def sdk_encoded_size(msg: OutboundMessage) -> int:
    """The size the SDK's own AMQP encoder gives the message (inside a batch, so an upper bound)."""
    batch = ServiceBusMessageBatch(max_size_in_bytes=64 * 1024 * 1024)
    batch.add_message(build_service_bus_message(msg))
    return batch.size_in_bytes


def offline_publisher(**options: int) -> ServiceBusPublisher:
    return ServiceBusPublisher(
        UNREACHABLE_NAMESPACE,
        credential=AzureNamedKeyCredential("RootManageSharedAccessKey", "a2V5"),
        retry_total=0,
        **options,
    )


def test_the_sdk_message_carries_every_property_the_pipeline_relies_on() -> None:
    when = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    outbound = message(
        body=b'{"stage":"critic"}',
        subject="critic",
        application_properties={"traceparent": "00-abc-def-01", "revision": 2, "final": False},
        scheduled_enqueue_time=when,
        content_type="application/json; charset=utf-8",
    )

    built = build_service_bus_message(outbound)

    assert b"".join(built.body) == b'{"stage":"critic"}'
    assert built.message_id == "conv-1:intent:0"
    assert built.correlation_id == "conv-1"
    assert built.subject == "critic"
    assert built.content_type == "application/json; charset=utf-8"
    assert built.application_properties == {
        "traceparent": "00-abc-def-01",
        "revision": 2,
        "final": False,
    }
    assert built.scheduled_enqueue_time_utc == when


def test_an_unscheduled_message_without_properties_leaves_them_unset() -> None:
    built = build_service_bus_message(message())

    assert built.scheduled_enqueue_time_utc is None
    assert not built.application_properties
    assert built.subject is None


def test_a_naive_scheduled_time_is_refused_rather_than_guessed() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        build_service_bus_message(message(scheduled_enqueue_time=datetime(2031, 1, 1)))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"application_properties": {"nested": {"a": 1}}}, "unsupported value"),
        ({"application_properties": {"": "x"}}, "non-empty"),
        ({"application_properties": {"epoch_ms": 2**31}}, "32 bits"),
        ({"message_id": ""}, "message_id"),
        ({"queue": ""}, "queue"),
    ],
)
def test_malformed_outbound_messages_are_refused_with_a_reason(
    fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem):
        build_service_bus_message(message(**fields))


property_values = st.one_of(
    st.text(max_size=200),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=4096),
    message_id=st.text(min_size=1, max_size=128),
    correlation_id=st.text(max_size=128),
    subject=st.text(max_size=64),
    properties=st.dictionaries(st.text(min_size=1, max_size=40), property_values, max_size=12),
    scheduled=st.booleans(),
)
def test_the_size_estimate_never_undercounts_the_sdk_encoding_and_stays_close(
    body: bytes,
    message_id: str,
    correlation_id: str,
    subject: str,
    properties: dict[str, str | int | float | bool],
    scheduled: bool,
) -> None:
    outbound = message(
        body=body,
        message_id=message_id,
        correlation_id=correlation_id,
        subject=subject,
        application_properties=properties,
        scheduled_enqueue_time=datetime.now(UTC) + timedelta(minutes=5) if scheduled else None,
    )

    estimate = estimate_message_size(outbound)
    actual = sdk_encoded_size(outbound)

    assert estimate >= actual
    assert estimate - actual <= MESSAGE_OVERHEAD_BYTES + 16 * (len(properties) + 4)


def test_a_body_that_fits_with_its_properties_passes_the_size_check() -> None:
    probe = message(body=b"")
    room = SERVICE_BUS_MAX_BYTES - estimate_message_size(probe)

    assert check_message_size(message(body=b"a" * room)) == SERVICE_BUS_MAX_BYTES


def test_one_byte_over_the_limit_is_an_oversize_message_naming_size_and_limit() -> None:
    probe = message(body=b"")
    room = SERVICE_BUS_MAX_BYTES - estimate_message_size(probe)

    with pytest.raises(OversizeMessage) as caught:
        check_message_size(message(body=b"a" * (room + 1)))

    assert str(SERVICE_BUS_MAX_BYTES) in str(caught.value)
    assert str(SERVICE_BUS_MAX_BYTES + 1) in str(caught.value)
    assert "conv-1:intent:0" in str(caught.value)


def test_properties_over_the_header_limit_are_oversize_even_with_a_small_body() -> None:
    bulky = {f"p{n}": "v" * 1000 for n in range(70)}

    with pytest.raises(OversizeMessage, match=str(MAX_HEADER_BYTES)):
        check_message_size(message(application_properties=bulky))


async def test_send_refuses_an_oversize_message_before_connecting() -> None:
    publisher = offline_publisher(max_message_bytes=4096)
    try:
        with pytest.raises(OversizeMessage, match="4096"):
            await publisher.send(message(body=b"a" * 5000))
    finally:
        await publisher.close()


async def test_a_connection_failure_is_a_transient_error() -> None:
    publisher = offline_publisher()
    try:
        with pytest.raises(TransientError, match="intent"):
            await publisher.send(message())
    finally:
        await publisher.close()


async def test_a_closed_publisher_refuses_to_send() -> None:
    publisher = offline_publisher()
    await publisher.close()
    await publisher.close()

    with pytest.raises(RuntimeError, match="closed"):
        await publisher.send(message())


def test_from_settings_needs_the_namespace() -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceBusPublisher.from_settings(Settings(servicebus_namespace=None))

    assert caught.value.setting == "ServiceBusConnection__fullyQualifiedNamespace"


async def test_from_settings_builds_a_publisher_without_connecting() -> None:
    publisher = ServiceBusPublisher.from_settings(
        Settings(
            servicebus_namespace="switchboard-test.servicebus.windows.net",
            managed_identity_client_id="00000000-0000-0000-0000-000000000001",
        )
    )
    await publisher.close()

    with pytest.raises(RuntimeError, match="closed"):
        await publisher.send(message())
