"""The ``Publisher`` port over the devhost broker: what the Service Bus adapter is in Azure."""

from __future__ import annotations

import asyncio

from devhost.broker import SERVICE_BUS_MAX_MESSAGE_BYTES, Broker
from shared.errors import OversizeMessage
from shared.ports import OutboundMessage


class BrokerPublisher:
    def __init__(self, broker: Broker, *, max_message_bytes: int = SERVICE_BUS_MAX_MESSAGE_BYTES):
        self._broker = broker
        self._max = max_message_bytes

    async def send(self, message: OutboundMessage) -> None:
        if len(message.body) > self._max:
            raise OversizeMessage(
                f"message {message.message_id} is {len(message.body)} bytes; "
                f"the limit is {self._max}"
            )
        scheduled = message.scheduled_enqueue_time
        await asyncio.to_thread(
            self._broker.send,
            message.queue,
            message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id or None,
            subject=message.subject or None,
            content_type=message.content_type,
            application_properties=dict(message.application_properties),
            scheduled_enqueue_time=scheduled.timestamp() if scheduled else None,
        )

    async def close(self) -> None:
        return None
