"""The Event Hubs dialect (hubs, partitions, consumer groups, ``$management``)."""

from __future__ import annotations

from devhost.amqp.server import Protocol, ServerHandler


class EventHubsProtocol(Protocol):
    """Event hubs of the broker as Event Hubs entities."""

    def claims(self, server: ServerHandler, path: str) -> str | None:
        return None
