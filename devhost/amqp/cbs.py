"""The ``$cbs`` node: claims-based security, where a client puts the SAS token for an entity.

A token put here is verified against the server's keys and kept with the connection; links to
the entity it covers may attach while it lives (see ``ServerHandler.authorise``). Shapes follow
the AMQP CBS draft as Service Bus serves it
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide#claims-based-authorization).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from proton import Link, Message

from devhost.amqp import codec
from devhost.amqp.codec import Refused
from devhost.amqp.sas import SasError, SasGrant, resource_path
from devhost.amqp.state import AmqpConfig, ConnectionState

logger = logging.getLogger(__name__)


class TokenServer(Protocol):
    """What ``$cbs`` needs of the server: its keys and clock, its routes, its connections."""

    config: AmqpConfig

    def verify_token(self, token: str) -> SasGrant: ...

    def route(self, path: str) -> object:
        """Raise :class:`Refused` when no dialect serves ``path``."""
        ...

    def connection_state(self, link: Link) -> ConnectionState: ...


def answer(server: TokenServer, link: Link, request: Message) -> Message:
    """The reply to a request on ``$cbs``: ``put-token`` is served, anything else is 501."""
    properties: dict[Any, Any] = request.properties or {}
    operation = str(properties.get("operation", ""))
    if operation != "put-token":
        return _reply(request, 501, f"$cbs does not implement {operation!r}")
    return _put_token(server, link, request, properties)


def _put_token(
    server: TokenServer, link: Link, request: Message, properties: dict[Any, Any]
) -> Message:
    token = request.body
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    audience = str(properties.get("name", ""))
    now = server.config.clock
    try:
        grant = server.verify_token(str(token or ""))
        if resource_path(audience) != grant.path and not grant.covers(
            resource_path(audience), now()
        ):
            raise SasError("InvalidAudience", f"the token is for {grant.resource}, not {audience}")
    except SasError as error:
        logger.info("AMQP server: put-token refused for %s: %s", audience, error)
        return _reply(request, 401, f"{error.code}: {error}")
    entity = resource_path(audience)
    if entity:
        try:
            server.route(entity)
        except Refused as refused:
            return _reply(request, 404, refused.description)
    grants = server.connection_state(link).grants
    grants[:] = [g for g in grants if g.expiry > now()]
    grants.append(grant)
    return _reply(request, 202, "Accepted")


def _reply(request: Message, status: int, description: str) -> Message:
    return codec.reply(
        request,
        status=status,
        description=description,
        code_field="status-code",
        description_field="status-description",
    )
