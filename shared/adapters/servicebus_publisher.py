"""The ``Publisher`` on Azure Service Bus queues, through ``azure.servicebus.aio``.

One ``ServiceBusClient`` per publisher (the composition root makes one publisher per process),
one cached sender per queue, both made on the first send and closed by ``close()``. A message's
size is checked before it leaves, so an oversize one fails as ``OversizeMessage`` (dead-letter
with a reason, body intact) rather than as an opaque broker error after a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

from shared.errors import ConfigError, InvalidInput, OversizeMessage, TransientError
from shared.messages import SERVICE_BUS_MAX_BYTES
from shared.ports import OutboundMessage, PropertyValue

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusSender

    from shared.config import Settings

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
"""Service Bus caps a message's properties (system and application) at 64 KB on every tier."""

MESSAGE_OVERHEAD_BYTES = 1024
"""Room for what the estimate does not count byte by byte: the AMQP section descriptors, the
header and annotations the SDK adds (scheduled enqueue time), and the broker's own properties
(sequence number, enqueued time, lock token) that count against the limit once the message is
stored. Measured AMQP framing for a message of this pipeline is a few dozen bytes."""

PROPERTY_OVERHEAD_BYTES = 16
"""Per property and per system field: AMQP type constructors and length prefixes (at most 10)."""

NON_STRING_VALUE_BYTES = 9
"""The largest AMQP encoding of a bool, long or double value (constructor + 8 bytes)."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_TRANSIENT = (
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
)


def estimate_header_size(msg: OutboundMessage) -> int:
    """A conservative size in bytes of the message's system and application properties."""
    size = 0
    for text in (msg.message_id, msg.correlation_id, msg.subject, msg.content_type):
        size += len(text.encode("utf-8")) + PROPERTY_OVERHEAD_BYTES
    for key, value in msg.application_properties.items():
        size += len(str(key).encode("utf-8")) + _value_size(value) + PROPERTY_OVERHEAD_BYTES
    return size


def estimate_message_size(msg: OutboundMessage) -> int:
    """A conservative size in bytes of ``msg`` as Service Bus counts it against its limit.

    It is the body, plus every property's key and value with its encoding overhead, plus a fixed
    allowance for framing and broker-added properties. It never undercounts what the SDK
    encodes (the unit tests check it against the SDK's own AMQP encoder), and overcounts by
    about ``MESSAGE_OVERHEAD_BYTES``, which is 0.4% of the Standard tier's 256 KB limit.
    """
    return len(msg.body) + estimate_header_size(msg) + MESSAGE_OVERHEAD_BYTES


def check_message_size(msg: OutboundMessage, max_bytes: int = SERVICE_BUS_MAX_BYTES) -> int:
    """Return the estimated size of ``msg``; raise ``OversizeMessage`` if it would be refused."""
    header = estimate_header_size(msg)
    if header > MAX_HEADER_BYTES:
        raise OversizeMessage(
            f"message {msg.message_id} for queue {msg.queue}: its properties take about "
            f"{header} bytes, over the {MAX_HEADER_BYTES}-byte header limit"
        )
    size = estimate_message_size(msg)
    if size > max_bytes:
        raise OversizeMessage(
            f"message {msg.message_id} for queue {msg.queue} is about {size} bytes, over the "
            f"{max_bytes}-byte limit; send a blob reference instead of the document"
        )
    return size


def build_service_bus_message(msg: OutboundMessage) -> ServiceBusMessage:
    """Translate the pipeline's ``OutboundMessage`` into the SDK's ``ServiceBusMessage``.

    ``message_id`` is what duplicate detection keys on, so a redelivered stage re-sends under
    the same id and the broker drops the copy; ``scheduled_enqueue_time`` defers delivery
    (retry later without holding a message lock).
    """
    if not msg.queue:
        raise InvalidInput("outbound message has no queue")
    if not msg.message_id:
        raise InvalidInput("outbound message has no message_id")
    if not isinstance(msg.body, bytes | bytearray):
        raise InvalidInput("outbound message body must be bytes")
    scheduled = msg.scheduled_enqueue_time
    if scheduled is not None and scheduled.utcoffset() is None:
        raise InvalidInput("scheduled_enqueue_time must be timezone-aware")
    properties: dict[str | bytes, Any] = {
        str(key): _checked_property(key, value) for key, value in msg.application_properties.items()
    }
    return ServiceBusMessage(
        bytes(msg.body),
        message_id=msg.message_id,
        correlation_id=msg.correlation_id or None,
        subject=msg.subject or None,
        content_type=msg.content_type or None,
        application_properties=properties or None,
        scheduled_enqueue_time_utc=scheduled,
    )


class ServiceBusPublisher:
    """``Publisher`` on one Service Bus namespace, authenticated by a token credential."""

    def __init__(
        self,
        fully_qualified_namespace: str,
        *,
        credential: Any,
        max_message_bytes: int = SERVICE_BUS_MAX_BYTES,
        send_timeout_s: float = 10.0,
        retry_total: int = 3,
        owns_credential: bool = False,
    ) -> None:
        """Describe the publisher; nothing connects until the first ``send``.

        ``max_message_bytes`` is the tier's limit (256 KB Standard, up to 100 MB Premium).
        ``send_timeout_s`` bounds one send so that it ends well inside the lock of the message
        being processed. ``owns_credential`` makes ``close()`` close the credential too.
        """
        if not fully_qualified_namespace:
            raise ConfigError("ServiceBusConnection__fullyQualifiedNamespace", "missing")
        if max_message_bytes <= MESSAGE_OVERHEAD_BYTES:
            raise ConfigError("max_message_bytes", f"{max_message_bytes} is too small")
        self._namespace = fully_qualified_namespace
        self._credential = credential
        self._max_message_bytes = max_message_bytes
        self._send_timeout_s = send_timeout_s
        self._retry_total = retry_total
        self._owns_credential = owns_credential
        self._client: ServiceBusClient | None = None
        self._senders: dict[str, ServiceBusSender] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceBusPublisher:
        """The production publisher: the app's managed identity on the configured namespace."""
        if not settings.servicebus_namespace:
            raise ConfigError("ServiceBusConnection__fullyQualifiedNamespace", "missing")
        return cls(
            settings.servicebus_namespace,
            credential=_managed_identity(settings.managed_identity_client_id),
            owns_credential=True,
        )

    async def send(self, message: OutboundMessage) -> None:
        """Send one message to its queue; raise ``OversizeMessage`` or ``TransientError``."""
        check_message_size(message, self._max_message_bytes)
        sb_message = build_service_bus_message(message)
        sender = await self._sender(message.queue)
        try:
            await sender.send_messages(sb_message, timeout=self._send_timeout_s)
        except MessageSizeExceededError as exc:
            raise OversizeMessage(
                f"message {message.message_id} for queue {message.queue} was refused as too large"
            ) from exc
        except _TRANSIENT as exc:
            logger.warning(
                "service bus send to %s failed transiently (%s); message_id=%s",
                message.queue,
                exc.__class__.__name__,
                message.message_id,
            )
            raise TransientError(f"service bus {message.queue}: {exc.__class__.__name__}") from exc
        logger.debug("sent message_id=%s to %s", message.message_id, message.queue)

    async def close(self) -> None:
        """Close every sender, then the client (and the credential if owned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            senders, self._senders = list(self._senders.values()), {}
            client, self._client = self._client, None
        for sender in senders:
            await sender.close()
        if client is not None:
            await client.close()
        if self._owns_credential and hasattr(self._credential, "close"):
            await self._credential.close()

    async def _sender(self, queue: str) -> ServiceBusSender:
        sender = self._senders.get(queue)
        if sender is not None:
            return sender
        async with self._lock:
            if self._closed:
                raise RuntimeError("ServiceBusPublisher is closed")
            if self._client is None:
                self._client = ServiceBusClient(
                    self._namespace, self._credential, retry_total=self._retry_total
                )
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._client.get_queue_sender(queue_name=queue)
                self._senders[queue] = sender
            return sender


def _value_size(value: PropertyValue) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return NON_STRING_VALUE_BYTES


def _checked_property(key: object, value: object) -> PropertyValue:
    if not isinstance(key, str) or not key:
        raise InvalidInput("application property names must be non-empty strings")
    if not isinstance(value, str | int | float | bool):
        raise InvalidInput(f"application property {key!r} has an unsupported value type")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not _INT32_MIN <= value <= _INT32_MAX
    ):
        # The SDK encodes integer properties as AMQP int (32-bit) and fails at send time on
        # anything wider; refusing here names the property instead.
        raise InvalidInput(
            f"application property {key!r} is an integer wider than 32 bits; send it as a string"
        )
    return value


def _managed_identity(client_id: str | None) -> Any:
    """The app's user-assigned identity when its client id is set, else the default chain."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()
