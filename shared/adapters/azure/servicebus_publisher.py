"""The ``Publisher`` on Azure Service Bus queues and topics, through ``azure.servicebus.aio``.

One ``ServiceBusClient`` per publisher (the composition root makes one publisher per process),
one cached sender per queue, both made on the first send and closed by ``close()``. A message's
size is checked before it leaves (``shared.domain.messages.check_message_size``, the same check the
devhost publisher makes), so an oversize one fails as ``OversizeMessage`` (dead-letter with a
reason, body intact) rather than as an opaque broker error after a round trip.
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

from shared.adapters.azure.connection_strings import SasConnection, servicebus_connection
from shared.adapters.azure.lazy_client import LazyClient, managed_identity_credential
from shared.domain.messages import (
    MESSAGE_OVERHEAD_BYTES,
    SERVICE_BUS_MAX_BYTES,
    check_message_size,
)
from shared.errors import ConfigError, InvalidInput, OversizeMessage, TransientError
from shared.ports import OutboundMessage, PropertyValue

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusSender

    from shared.config import Settings

logger = logging.getLogger(__name__)

SERVICE_BUS_CONNECTION = "ServiceBusConnection"
"""The connection name the triggers, the output bindings and this publisher share."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_TRANSIENT = (
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
)


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
        use_tls: bool = True,
    ) -> None:
        """Describe the publisher; nothing connects until the first ``send``.

        ``max_message_bytes`` is the tier's limit (256 KB Standard, up to 100 MB Premium).
        ``send_timeout_s`` bounds one send so that it ends well inside the lock of the message
        being processed. ``owns_credential`` makes ``close()`` close the credential too.
        ``use_tls=False`` is for a local AMQP endpoint only (devhost's, or an emulator).
        """
        if not fully_qualified_namespace:
            raise ConfigError("ServiceBusConnection__fullyQualifiedNamespace", "missing")
        if max_message_bytes <= MESSAGE_OVERHEAD_BYTES:
            raise ConfigError("max_message_bytes", f"{max_message_bytes} is too small")
        self._max_message_bytes = max_message_bytes
        self._send_timeout_s = send_timeout_s
        self._client = LazyClient(
            "ServiceBusPublisher",
            lambda: ServiceBusClient(
                fully_qualified_namespace, credential, retry_total=retry_total, use_tls=use_tls
            ),
            credential=credential,
            owns_credential=owns_credential,
        )
        self._senders: dict[str, ServiceBusSender] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceBusPublisher:
        """The publisher the settings describe: a connection string in ``ServiceBusConnection``
        when set (the Functions extensions' rule: the exact setting wins), else the app's
        managed identity on ``ServiceBusConnection__fullyQualifiedNamespace``."""
        if settings.servicebus_connection_string is not None:
            return cls.from_connection_string(
                servicebus_connection(SERVICE_BUS_CONNECTION, settings.servicebus_connection_string)
            )
        if not settings.servicebus_namespace:
            raise ConfigError(
                f"{SERVICE_BUS_CONNECTION}__fullyQualifiedNamespace",
                f"missing (or set {SERVICE_BUS_CONNECTION} to a connection string)",
            )
        return cls(
            settings.servicebus_namespace,
            credential=managed_identity_credential(settings.managed_identity_client_id),
            owns_credential=True,
        )

    @classmethod
    def from_connection_string(cls, connection: SasConnection) -> ServiceBusPublisher:
        """A publisher on a parsed connection string (key or SAS; plain AMQP for an emulator).
        The string must be the namespace's: the app sends to several queues and a topic."""
        if connection.entity:
            raise ConfigError(
                SERVICE_BUS_CONNECTION,
                "is scoped to one entity (EntityPath); the app sends to several queues and a "
                "topic, so use a namespace-level connection string",
            )
        return cls(
            connection.namespace, credential=connection.credential, use_tls=connection.use_tls
        )

    async def send(self, message: OutboundMessage) -> None:
        """Send one message to its queue or topic; raise ``OversizeMessage``, ``TransientError``."""
        check_message_size(message, self._max_message_bytes)
        sb_message = build_service_bus_message(message)
        sender = await self._sender(message.queue, topic=message.to_topic)
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
        async with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            await sender.close()
        await self._client.close()

    async def _sender(self, queue: str, *, topic: bool = False) -> ServiceBusSender:
        sender = self._senders.get(queue)
        if sender is not None:
            return sender
        client = await self._client.get()  # raises once closed
        async with self._lock:
            sender = self._senders.get(queue)
            if sender is None:
                sender = (
                    client.get_topic_sender(topic_name=queue)
                    if topic
                    else client.get_queue_sender(queue_name=queue)
                )
                self._senders[queue] = sender
            return sender


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
