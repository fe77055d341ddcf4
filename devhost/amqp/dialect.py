"""What the AMQP server and its dialects share: the listening config, connection and link state,
and the :class:`Protocol` a dialect (Service Bus, Event Hubs) implements.

A dialect claims the addresses it serves and handles their links' events; the server
(:class:`devhost.amqp.server.ServerHandler`) owns the connections, CBS and link routing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from proton import Delivery, Link, Message, Receiver, Sender

from devhost.amqp.sas import SasGrant
from shared.domain.messages import SERVICE_BUS_MAX_BYTES

if TYPE_CHECKING:
    from devhost.amqp.server import ServerHandler

DEFAULT_PORT: Final = 5672
# The key of Microsoft's Service Bus and Event Hubs emulators' connection strings; it opens
# nothing but a local devhost. Set DEVHOST_AMQP_KEY for another.
EMULATOR_KEY_NAME: Final = "RootManageSharedAccessKey"
EMULATOR_KEY: Final = "SAS_KEY_VALUE"


@dataclass(frozen=True)
class AmqpConfig:
    """Where and how the server listens.

    ``port`` 0 lets the OS pick (read :attr:`AmqpServer.port`). ``keys`` maps access-policy
    names to keys; tokens signed with any of them are accepted.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    keys: tuple[tuple[str, str], ...] = ((EMULATOR_KEY_NAME, EMULATOR_KEY),)
    max_connections: int = 64
    max_links_per_connection: int = 256
    max_frame_size: int = 65536
    max_message_bytes: int = SERVICE_BUS_MAX_BYTES
    max_unsettled_per_link: int = 5000
    link_credit: int = 500
    poll_interval_s: float = 0.02
    # How often live links are checked against their connection's tokens.
    token_check_interval_s: float = 1.0
    # The clock tokens are checked against (tests move it); epoch seconds.
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the AMQP server listens on loopback only, not {self.host!r}")
        if not self.keys:
            raise ValueError("at least one access key is required")


@dataclass
class ConnectionState:
    """What the server keeps per client connection."""

    id: str
    grants: list[SasGrant] = field(default_factory=list)
    links: int = 0

    def authorised(self, path: str, now: float) -> bool:
        return any(grant.covers(path, now) for grant in self.grants)


@dataclass
class LinkState:
    """What the server keeps per link: which entity it serves and its deliveries."""

    kind: str
    path: str
    entity: str = ""
    receive_and_delete: bool = False
    # Unsettled peek-lock deliveries: lock token -> delivery tag.
    inflight: dict[str, bytes] = field(default_factory=dict)
    # Replies waiting for credit on a management or CBS response link.
    outbox: list[Message] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Protocol:
    """A dialect (Service Bus, Event Hubs): claims addresses and serves their links."""

    def attach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        """Set up a link this dialect owns; raise :class:`Refused` to refuse it."""
        raise NotImplementedError

    def claims(self, server: ServerHandler, path: str) -> str | None:
        """The link kind for ``path`` when this dialect serves it, else None."""
        raise NotImplementedError

    def on_message(
        self, server: ServerHandler, link: Receiver, state: LinkState, payload: bytes
    ) -> None:
        """A complete transfer arrived on a link of this dialect (a client's send)."""
        raise NotImplementedError

    def on_credit(self, server: ServerHandler, link: Sender, state: LinkState) -> None:
        """A client gave credit on a link of this dialect (a client's receiver)."""

    def on_outcome(self, server: ServerHandler, delivery: Delivery, state: LinkState) -> None:
        """A client settled (or reported the outcome of) a delivery the server sent."""
        delivery.settle()

    def on_detach(self, server: ServerHandler, link: Link, state: LinkState) -> None:
        """A link of this dialect closed."""

    def tick(self, server: ServerHandler) -> None:
        """Periodic work: deliver what other processes sent."""
