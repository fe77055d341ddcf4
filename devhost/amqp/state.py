"""What the AMQP server keeps: its listening config, and state per connection and per link.

The server (:class:`devhost.amqp.server.ServerHandler`) creates these; the dialects (Service
Bus, Event Hubs) and the ``$cbs`` node read and fill them in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from proton import Message

from devhost.amqp.sas import SasGrant
from shared.domain.messages import SERVICE_BUS_MAX_BYTES

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
