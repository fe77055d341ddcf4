"""Errors the devhost broker raises."""

from __future__ import annotations

from shared.errors import OversizeMessage, SwitchboardError, TransientError


class BrokerError(SwitchboardError):
    """Base class of the errors the devhost broker raises."""


class UnknownQueue(BrokerError):
    """The queue was never declared with :meth:`Broker.ensure_queue`."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"unknown queue {queue!r}; declare it with ensure_queue first")
        self.queue = queue


class UnknownHub(BrokerError):
    """The event hub was never declared with :meth:`Broker.ensure_hub`."""

    def __init__(self, hub: str) -> None:
        super().__init__(f"unknown event hub {hub!r}; declare it with ensure_hub first")
        self.hub = hub


class LockLost(BrokerError, TransientError):
    """The message lock expired, was taken over by another receiver, or the message is gone."""


class LeaseLost(BrokerError, TransientError):
    """This owner no longer holds the lease on the partition (expired or taken over)."""


class BrokerBusy(BrokerError, TransientError):
    """The database stayed locked by other writers for longer than the busy timeout."""


class MessageTooLarge(BrokerError, OversizeMessage):
    """A message or event is larger than the transport accepts."""

    reason_code = "OversizeMessage"
