"""AMQP 1.0 on loopback over devhost's broker: the Service Bus and Event Hubs dialects.

Apache Qpid Proton does the framing, SASL and flow control; this module maps links and
messages onto :class:`devhost.broker.Broker`, the same SQLite file the workers use. One thread
runs Proton's reactor; every broker call is one short transaction made from that thread.
Its config and the state it keeps per connection and link are in :mod:`devhost.amqp.state`; the
``$cbs`` token node is :mod:`devhost.amqp.cbs`.

What a client sees, as with Service Bus and Event Hubs:

* SASL ANONYMOUS, then a claims-based security token (CBS ``put-token`` on ``$cbs``) per
  entity. The token is a SAS token, verified against the configured key; a link to an entity no
  live token of the connection covers is refused with ``amqp:unauthorized-access``.
* Attach addresses may be full URLs (``amqps://host:port/queue``); the path names the entity.
* ``queue``: send (single, batch, scheduled); receive in peek-lock (delivery tag = lock token)
  or receive-and-delete; settle on the link (complete, abandon, dead-letter), the server
  echoing the outcome it applied. ``queue/$DeadLetterQueue`` reads the dead-letter sub-queue.
* ``queue/$management``: renew-lock, peek, schedule and cancel, update-disposition,
  receive-by-sequence-number (see :mod:`devhost.amqp.servicebus`).
* Event Hubs: ``hub``, ``hub/Partitions/N`` (send), ``hub/ConsumerGroups/G/Partitions/N``
  (receive), ``$management`` (hub and partition properties): see :mod:`devhost.amqp.eventhubs`.

Limits keep a misbehaving client from exhausting the host: connections, links per connection,
frame size, message size and the number of unsettled deliveries per link are bounded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final, cast

from proton import (
    Connection,
    Delivery,
    Endpoint,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
    Terminus,
    Transport,
)

from devhost.amqp import cbs, codec
from devhost.amqp.codec import Refused
from devhost.amqp.sas import SasGrant, resource_path, verify
from devhost.amqp.state import (
    DEFAULT_PORT,
    EMULATOR_KEY,
    EMULATOR_KEY_NAME,
    AmqpConfig,
    ConnectionState,
    LinkState,
)
from devhost.broker import Broker

logger = logging.getLogger(__name__)

UNAUTHORIZED: Final = "amqp:unauthorized-access"
NOT_FOUND: Final = "amqp:not-found"
RESOURCE_LIMIT: Final = "amqp:resource-limit-exceeded"
INTERNAL: Final = "amqp:internal-error"
DETACH_FORCED: Final = "amqp:link:detach-forced"
LOCK_LOST: Final = "com.microsoft:message-lock-lost"
DEAD_LETTER: Final = "com.microsoft:dead-letter"
_LINK_STATE: Final = "devhost_link"
_CONN_STATE: Final = "devhost_connection"
_AUTHORISED: Final = "devhost_authorised"


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


def _guarded(method: Callable[[ServerHandler, Any], None]) -> Callable[[ServerHandler, Any], None]:
    """Keep the reactor alive when handling one event fails: log it, detach the link (or
    close the connection) it concerned with ``amqp:internal-error``."""

    @functools.wraps(method)
    def guarded(self: ServerHandler, event: Any) -> None:
        try:
            method(self, event)
        except Exception as error:
            logger.exception("AMQP server: %s failed", method.__name__)
            condition = codec.error(INTERNAL, f"devhost failed to handle the request: {error}")
            endpoint = getattr(event, "link", None) or getattr(event, "connection", None)
            if endpoint is not None and not endpoint.state & Endpoint.LOCAL_CLOSED:
                with contextlib.suppress(Exception):
                    endpoint.condition = condition
                    endpoint.close()

    return guarded


class ServerHandler(Handler):
    """Proton's event handler: connections, CBS, link routing to the dialects."""

    def __init__(self, broker: Broker, config: AmqpConfig, protocols: list[Protocol]) -> None:
        super().__init__()
        self.broker = broker
        self.config = config
        self.protocols = protocols
        self.keys = dict(config.keys)
        self.connections = 0
        self.senders: dict[str, list[Sender]] = {}
        # Links attached to an entity, each held only while a token of its connection covers it.
        self.authorised_links: dict[int, tuple[Link, LinkState]] = {}
        self._next_token_check = 0.0

    def tick(self) -> None:
        """Periodic work of the dialects (the loop calls it every ``poll_interval_s``), and,
        every ``token_check_interval_s``, detaching links whose tokens have expired."""
        now = time.monotonic()
        if now >= self._next_token_check:
            self._next_token_check = now + self.config.token_check_interval_s
            self.detach_expired()
        for protocol in self.protocols:
            try:
                protocol.tick(self)
            except Exception:
                logger.exception("AMQP server: periodic delivery failed")

    # -- connections ---------------------------------------------------------------------------

    def accepted(self, transport: Transport, connection: Connection) -> None:
        """A client connected: SASL ANONYMOUS (tokens come through $cbs), bounded frames."""
        transport.max_frame_size = self.config.max_frame_size
        transport.idle_timeout = 240.0
        sasl = transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")
        self.connections += 1
        _set(connection, _CONN_STATE, ConnectionState(id=uuid.uuid4().hex[:12]))

    @_guarded
    def on_connection_unbound(self, event: Any) -> None:
        self.connections = max(0, self.connections - 1)

    @_guarded
    def on_connection_remote_open(self, event: Any) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = f"devhost-{uuid.uuid4().hex[:8]}"
            connection.open()
        if self.connections > self.config.max_connections:
            connection.condition = codec.error(
                RESOURCE_LIMIT,
                f"devhost accepts at most {self.config.max_connections} AMQP connections",
            )
            connection.close()

    @_guarded
    def on_connection_remote_close(self, event: Any) -> None:
        connection = event.connection
        if not connection.state & Endpoint.LOCAL_CLOSED:
            connection.close()

    @_guarded
    def on_session_remote_open(self, event: Any) -> None:
        session = event.session
        if session.state & Endpoint.LOCAL_UNINIT:
            session.open()

    @_guarded
    def on_session_remote_close(self, event: Any) -> None:
        session = event.session
        if not session.state & Endpoint.LOCAL_CLOSED:
            session.close()

    # -- links ---------------------------------------------------------------------------------

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        link: Link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        connection_state = self.connection_state(link)
        address = (link.remote_source if link.is_sender else link.remote_target).address or ""
        path = resource_path(address)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        state = LinkState(kind="", path=path)
        try:
            if connection_state.links >= self.config.max_links_per_connection:
                raise Refused(
                    RESOURCE_LIMIT,
                    f"a connection may hold at most {self.config.max_links_per_connection} links",
                )
            if link.is_receiver and link.remote_target.type == Terminus.COORDINATOR:
                raise Refused(
                    codec.NOT_IMPLEMENTED,
                    "devhost does not support transactions (the AMQP transaction coordinator):"
                    " send and settle without a transaction",
                )
            if path == "$cbs":
                state.kind = "cbs"
            else:
                protocol, kind = self.route(path)
                state.kind = kind
                state.extra["protocol"] = protocol
                protocol.attach(self, link, state)
        except Refused as refused:
            self._refuse(link, refused)
            return
        except Exception as error:
            logger.exception("AMQP server: attaching %s failed", address)
            self._refuse(link, Refused(INTERNAL, f"attaching {address} failed: {error}"))
            return
        connection_state.links += 1
        _set(link, _LINK_STATE, state)
        authorised: str | None = _get(link, _AUTHORISED)
        if authorised is not None:
            state.extra["authorised"] = authorised
            self.authorised_links[id(state)] = (link, state)
        link.open()
        if link.is_receiver:
            link.flow(self.config.link_credit)
        else:
            self.senders.setdefault(state.path, []).append(link)  # type: ignore[arg-type]

    def route(self, path: str) -> tuple[Protocol, str]:
        for protocol in self.protocols:
            kind = protocol.claims(self, path)
            if kind is not None:
                return protocol, kind
        raise Refused(
            NOT_FOUND,
            f"The messaging entity '{path}' could not be found. devhost serves the queues and"
            " event hubs its broker declares.",
        )

    def _refuse(self, link: Link, refused: Refused) -> None:
        """Refuse an attach as Service Bus does: attach, then detach with the error."""
        link.open()
        link.condition = codec.error(refused.condition, refused.description)
        link.close()

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        link: Link = event.link
        self._forget(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    @_guarded
    def on_link_final(self, event: Any) -> None:
        self._forget(event.link)

    def _forget(self, link: Link) -> None:
        state: LinkState | None = _get(link, _LINK_STATE)
        if state is None:
            return
        _set(link, _LINK_STATE, None)
        self.authorised_links.pop(id(state), None)
        connection_state = self.connection_state(link)
        connection_state.links = max(0, connection_state.links - 1)
        if link.is_sender:
            with contextlib.suppress(ValueError):
                self.senders.get(state.path, []).remove(link)  # type: ignore[arg-type]
        protocol: Protocol | None = state.extra.get("protocol")
        if protocol is not None:
            try:
                protocol.on_detach(self, link, state)
            except Exception:
                logger.exception("AMQP server: detaching %s failed", state.path)

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        link: Link = event.link
        state: LinkState | None = _get(link, _LINK_STATE)
        if state is None or not link.is_sender:
            return
        self.flush(link)  # type: ignore[arg-type]
        protocol: Protocol | None = state.extra.get("protocol")
        if protocol is not None and link.credit > 0:
            protocol.on_credit(self, link, state)  # type: ignore[arg-type]
            link.drained()

    # -- deliveries ----------------------------------------------------------------------------

    @_guarded
    def on_delivery(self, event: Any) -> None:
        delivery: Delivery = event.delivery
        link = delivery.link
        state: LinkState | None = _get(link, _LINK_STATE)
        if link.is_receiver:
            self._incoming(link, delivery, state)  # type: ignore[arg-type]
        elif delivery.updated and state is not None:
            protocol: Protocol | None = state.extra.get("protocol")
            if protocol is None:
                delivery.settle()
            else:
                protocol.on_outcome(self, delivery, state)
        elif delivery.updated:
            delivery.settle()

    def _incoming(self, link: Receiver, delivery: Delivery, state: LinkState | None) -> None:
        if delivery.aborted:
            delivery.settle()
            return
        if delivery.partial:
            if delivery.pending > self.config.max_message_bytes * 2 + 65536:
                # Far beyond the message limit and still coming: stop reading it.
                link.condition = codec.error(
                    codec.SIZE_EXCEEDED,
                    f"the message exceeds {self.config.max_message_bytes} bytes",
                )
                link.close()
            return
        if not delivery.readable:
            return
        payload = link.recv(delivery.pending) or b""
        link.advance()
        if link.credit < self.config.link_credit // 2:
            link.flow(self.config.link_credit - link.credit)
        if state is None:
            self.settle(delivery, Delivery.REJECTED, Refused(INTERNAL, "the link is closed"))
            return
        refused = self.transfer_refusal(link, state)
        if refused is not None:
            self.settle(delivery, Delivery.REJECTED, refused)
            return
        try:
            if state.kind == "cbs":
                self._cbs(link, state, payload)
                self.settle(delivery, Delivery.ACCEPTED)
                return
            protocol: Protocol = state.extra["protocol"]
            protocol.on_message(self, link, state, payload)
        except Refused as refused:
            self.settle(delivery, Delivery.REJECTED, refused)
            return
        except Exception as error:
            logger.exception("AMQP server: a transfer to %s failed", state.path)
            self.settle(delivery, Delivery.REJECTED, Refused(INTERNAL, str(error)))
            return
        self.settle(delivery, Delivery.ACCEPTED)

    def transfer_refusal(self, link: Link, state: LinkState) -> Refused | None:
        """Why a client's transfer is not taken, if it is not: the server detached the link
        (the client sent before it read the detach), or its token expired since the last
        check. Refused, never stored, so a send the client sees fail did not happen."""
        if link.state & Endpoint.LOCAL_CLOSED:
            return Refused(DETACH_FORCED, "the link was detached: attach a new one")
        return self._token_lapsed(link, state)

    def _token_lapsed(self, link: Link, state: LinkState) -> Refused | None:
        path: str | None = state.extra.get("authorised")
        if path is None or self.connection_state(link).authorised(path, self.config.clock()):
            return None
        return Refused(UNAUTHORIZED, f"The token for '{path}' expired: put a new one on $cbs")

    def settle(self, delivery: Delivery, outcome: int, refused: Refused | None = None) -> None:
        """Settle a client's transfer with ``outcome`` (and the error of a rejection)."""
        if refused is not None:
            delivery.local.condition = codec.error(refused.condition, refused.description)
        delivery.update(outcome)
        delivery.settle()

    # -- CBS -----------------------------------------------------------------------------------

    def _cbs(self, link: Receiver, state: LinkState, payload: bytes) -> None:
        request = codec.decode(payload)
        self.respond(link, state, request, cbs.answer(self, link, request))

    def verify_token(self, token: str) -> SasGrant:
        """Verify a SAS token against the configured keys (raises :class:`SasError`)."""
        return verify(token, keys=self.keys, now=self.config.clock())

    def authorise(self, link: Link, path: str) -> None:
        """Refuse unless the connection holds a live token for ``path``; from then on the link
        lives as long as such a token does (clients put a fresh one before it expires)."""
        if not self.connection_state(link).authorised(path, self.config.clock()):
            raise Refused(
                UNAUTHORIZED,
                f"Unauthorized access to '{path}': put a valid SAS token for it on $cbs first",
            )
        _set(link, _AUTHORISED, path)

    def detach_expired(self) -> None:
        """Detach every link whose connection no longer holds a live token for its entity, as
        Service Bus and Event Hubs do when a token expires without renewal."""
        for key, (link, state) in list(self.authorised_links.items()):
            refused = self._token_lapsed(link, state)
            if refused is None:
                continue
            del self.authorised_links[key]
            if not link.state & Endpoint.LOCAL_CLOSED:
                link.condition = codec.error(refused.condition, refused.description)
                link.close()

    # -- replies on response links ---------------------------------------------------------------

    def respond(self, link: Link, state: LinkState, request: Message, answer: Message) -> None:
        """Send ``answer`` on the client's response link for ``state.path``: its receiver on
        the same node and connection (whose target is the request's reply-to, if given)."""
        target = self._reply_link(link, state.path, request.reply_to)
        if target is None:
            logger.info("AMQP server: no response link for %s; reply dropped", state.path)
            return
        target_state: LinkState | None = _get(target, _LINK_STATE)
        if target_state is None:
            return
        target_state.outbox.append(answer)
        self.flush(target)

    def _reply_link(self, link: Link, path: str, reply_to: str | None) -> Sender | None:
        connection = link.connection
        fallback: Sender | None = None
        for sender in self.senders.get(path, []):
            if sender.connection != connection:
                continue
            remote = sender.remote_target.address
            if reply_to and remote == reply_to:
                return sender
            if fallback is None or sender.session == link.session:
                fallback = sender
        return fallback

    def flush(self, link: Sender) -> None:
        """Send queued replies while the link has credit."""
        state: LinkState | None = _get(link, _LINK_STATE)
        if state is None:
            return
        while state.outbox and link.credit > 0:
            answer = state.outbox.pop(0)
            self.send(link, answer.encode(), tag=uuid.uuid4().bytes, settled=True)

    def send(self, link: Sender, payload: bytes, *, tag: bytes, settled: bool) -> Delivery:
        """One transfer on ``link``; pre-settled when ``settled``."""
        delivery = link.delivery(cast(Any, tag))  # Proton takes bytes too; its stub says str
        link.send(payload)
        link.advance()
        if settled:
            delivery.settle()
        return delivery

    # -- helpers -------------------------------------------------------------------------------

    def connection_state(self, link: Link) -> ConnectionState:
        state: ConnectionState | None = _get(link.connection, _CONN_STATE)
        if state is None:
            state = ConnectionState(id=uuid.uuid4().hex[:12])
            _set(link.connection, _CONN_STATE, state)
        return state


def _get(obj: Any, name: str) -> Any:
    """An attribute Proton keeps with its endpoint (it survives wrapper objects)."""
    return getattr(obj, name, None)


def _set(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)


__all__ = [
    "DEFAULT_PORT",
    "EMULATOR_KEY",
    "EMULATOR_KEY_NAME",
    "AmqpConfig",
    "LinkState",
    "Protocol",
    "ServerHandler",
    "Terminus",
]
