"""Send customer requests to the Event Hubs ingest hub, through ``azure.eventhub.aio``.

Producers (load generators, channel gateways) use this; the function app consumes the hub. Every
request is one event whose partition key is its customer id, so one customer's requests stay in
order on one partition. Events are packed into as few ``EventDataBatch``es as the size limit
allows, one partition key per batch. A single request too large for an event is refused with
``OversizeMessage`` while the rest are still sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from azure.eventhub import EventData, EventDataBatch, parse_connection_string
from azure.eventhub.aio import EventHubProducerClient
from azure.eventhub.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    EventDataSendError,
    OperationTimeoutError,
)

from shared.adapters.azure.connection_strings import SasConnection, parse_connection
from shared.adapters.azure.lazy_client import LazyClient, managed_identity_credential
from shared.domain.messages import EVENT_HUBS_MAX_BYTES
from shared.errors import ConfigError, InvalidInput, OversizeMessage, TransientError

if TYPE_CHECKING:
    from shared.config import Secret, Settings

logger = logging.getLogger(__name__)

EVENT_HUB_CONNECTION = "EventHubConnection"
"""The connection name the ingest trigger and this producer share."""
CONTENT_TYPE = "application/json"
EVENT_OVERHEAD_BYTES = 512
"""Room for the AMQP framing, the content type and the partition-key annotation of one event;
the SDK measures a few dozen bytes for them."""

CreateBatch = Callable[[str], Awaitable[EventDataBatch]]
"""partition key -> an empty batch for it."""
SendBatch = Callable[[EventDataBatch], Awaitable[None]]


class OversizeEvents(OversizeMessage):
    """Some requests were too large for one event; every other request was sent."""

    def __init__(self, rejected: Sequence[tuple[int, int]], sent: int, limit: int) -> None:
        listed = ", ".join(f"#{index} (~{size} bytes)" for index, size in rejected)
        super().__init__(
            f"{len(rejected)} request(s) over the {limit}-byte event limit were not sent: "
            f"{listed}; {sent} other(s) were sent"
        )
        self.rejected = tuple(index for index, _ in rejected)
        self.sent = sent
        self.limit = limit


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The request as compact UTF-8 JSON; ``InvalidInput`` when it is not a JSON object."""
    if not isinstance(request, Mapping):
        raise InvalidInput("a request must be a JSON object")
    try:
        text = json.dumps(request, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"request is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


def partition_key_of(request: Mapping[str, Any]) -> str:
    """The customer id, which keeps one customer's requests in order on one partition."""
    value = request.get("customerId", request.get("customer_id"))
    if not isinstance(value, str) or not value:
        raise InvalidInput("request has no customerId to partition by")
    return value


def build_event(request: Mapping[str, Any]) -> EventData:
    """One request as an ``EventData``: JSON body, JSON content type."""
    return _event(encode_request(request))


def _event(body: bytes) -> EventData:
    event = EventData(body)
    event.content_type = CONTENT_TYPE
    return event


def estimate_event_size(body: bytes) -> int:
    """A conservative size of the event carrying ``body`` (never below the SDK's encoding)."""
    return len(body) + EVENT_OVERHEAD_BYTES


async def send_in_batches(
    requests: Sequence[Mapping[str, Any]],
    *,
    create_batch: CreateBatch,
    send_batch: SendBatch,
    max_event_bytes: int = EVENT_HUBS_MAX_BYTES,
) -> int:
    """Send ``requests`` as batched events, one partition key per batch; return how many went.

    Every request is validated first, so a malformed one (``InvalidInput``) stops the call before
    anything is sent. A request too large for an event is skipped and reported at the end as
    ``OversizeEvents`` (with the indexes), after the others have been sent. A transient failure
    part-way raises ``TransientError`` saying how many had been sent; requests carry
    idempotency keys, so sending the rest again is safe.
    """
    groups: dict[str, list[tuple[int, int, EventData]]] = {}
    rejected: list[tuple[int, int]] = []
    problems: list[str] = []
    for index, request in enumerate(requests):
        try:
            body = encode_request(request)
            key = partition_key_of(request)
        except InvalidInput as exc:
            problems.append(f"#{index}: {exc.description}")
            continue
        size = estimate_event_size(body)
        if size > max_event_bytes:
            rejected.append((index, size))
            continue
        groups.setdefault(key, []).append((index, size, _event(body)))
    if problems:
        raise InvalidInput(f"{len(problems)} invalid request(s), none sent: {'; '.join(problems)}")

    sent = 0
    for key, events in groups.items():
        batch = await create_batch(key)
        for index, size, event in events:
            if _fits(batch, event):
                continue
            if len(batch) == 0:
                # The hub's own limit (from the link) is below the configured one.
                rejected.append((index, size))
                continue
            sent += await _send(send_batch, batch, sent, len(requests))
            batch = await create_batch(key)
            if not _fits(batch, event):
                rejected.append((index, size))
        if len(batch):
            sent += await _send(send_batch, batch, sent, len(requests))
    if rejected:
        raise OversizeEvents(sorted(rejected), sent, max_event_bytes)
    return sent


class EventHubRequestProducer:
    """Sends customer requests to one event hub, authenticated by a token credential."""

    def __init__(
        self,
        fully_qualified_namespace: str,
        eventhub_name: str,
        *,
        credential: Any,
        max_event_bytes: int = EVENT_HUBS_MAX_BYTES,
        retry_total: int = 3,
        owns_credential: bool = False,
        use_tls: bool = True,
    ) -> None:
        """Describe the producer; nothing connects until the first ``send_requests``.
        ``use_tls=False`` is for a local AMQP endpoint only (devhost's, or an emulator)."""
        if not fully_qualified_namespace:
            raise ConfigError("EventHubConnection__fullyQualifiedNamespace", "missing")
        if not eventhub_name:
            raise ConfigError("EVENTHUB_NAME", "missing")
        self._namespace = fully_qualified_namespace
        self._eventhub_name = eventhub_name
        self._credential = credential
        self._max_event_bytes = max_event_bytes
        self._retry_total = retry_total
        self._use_tls = use_tls
        self._lazy = LazyClient(
            "EventHubRequestProducer",
            self._make_client,
            credential=credential,
            owns_credential=owns_credential,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EventHubRequestProducer:
        """The producer the settings describe, for ``EVENTHUB_NAME``: a connection string in
        ``EventHubConnection`` when set (the Functions extensions' rule: the exact setting
        wins), else the managed identity on ``EventHubConnection__fullyQualifiedNamespace``."""
        hub = settings.eventhub_name
        if settings.eventhub_connection_string is not None:
            connection = eventhub_connection(
                EVENT_HUB_CONNECTION, settings.eventhub_connection_string
            )
            if connection.entity and connection.entity.lower() != hub.lower():
                raise ConfigError(
                    EVENT_HUB_CONNECTION,
                    f"is scoped to event hub {connection.entity!r} (EntityPath) but EVENTHUB_NAME "
                    f"is {hub!r}",
                )
            return cls(
                connection.namespace,
                hub,
                credential=connection.credential,
                use_tls=connection.use_tls,
            )
        if not settings.eventhub_namespace:
            raise ConfigError(
                f"{EVENT_HUB_CONNECTION}__fullyQualifiedNamespace",
                f"missing (or set {EVENT_HUB_CONNECTION} to a connection string)",
            )
        return cls(
            settings.eventhub_namespace,
            hub,
            credential=managed_identity_credential(settings.managed_identity_client_id),
            owns_credential=True,
        )

    async def send_requests(self, requests: Sequence[Mapping[str, Any]]) -> int:
        """Send ``requests``; return how many were sent. See ``send_in_batches`` for errors."""
        if not requests:
            return 0
        client = await self._producer()

        async def create_batch(key: str) -> EventDataBatch:
            async with _mapped_errors(self._eventhub_name):
                # The batch takes the hub's own size limit from the link; an event the
                # pre-check let through but the hub refuses is reported as oversize too.
                return await client.create_batch(partition_key=key)

        async def send_batch(batch: EventDataBatch) -> None:
            async with _mapped_errors(self._eventhub_name):
                await client.send_batch(batch)

        sent = await send_in_batches(
            requests,
            create_batch=create_batch,
            send_batch=send_batch,
            max_event_bytes=self._max_event_bytes,
        )
        logger.info("sent %d request event(s) to %s", sent, self._eventhub_name)
        return sent

    async def close(self) -> None:
        """Close the client (and the credential if owned). Idempotent."""
        await self._lazy.close()

    async def _producer(self) -> EventHubProducerClient:
        return await self._lazy.get()

    def _make_client(self) -> EventHubProducerClient:
        return EventHubProducerClient(
            self._namespace,
            self._eventhub_name,
            self._credential,
            retry_total=self._retry_total,
            use_tls=self._use_tls,
        )


def eventhub_connection(setting: str, value: Secret) -> SasConnection:
    """An Event Hubs connection string, parsed by ``azure.eventhub``; ``ConfigError`` naming
    ``setting`` when it is malformed."""

    def entity(parsed: Any) -> str | None:
        return parsed.eventhub_name  # type: ignore[no-any-return]

    return parse_connection(setting, value, parse_connection_string, entity)


def _fits(batch: EventDataBatch, event: EventData) -> bool:
    try:
        batch.add(event)
    except ValueError:
        return False
    return True


async def _send(send_batch: SendBatch, batch: EventDataBatch, sent: int, total: int) -> int:
    try:
        await send_batch(batch)
    except TransientError as exc:
        raise TransientError(f"{exc} after {sent} of {total} request(s) were sent") from exc
    return len(batch)


@asynccontextmanager
async def _mapped_errors(hub: str) -> AsyncIterator[None]:
    """Translate Event Hubs SDK errors: connection trouble is transient, auth is not."""
    try:
        yield
    except AuthenticationError:
        raise
    except (ConnectError, ConnectionLostError, OperationTimeoutError, EventDataSendError) as exc:
        raise TransientError(f"event hub {hub}: {exc.__class__.__name__}") from exc
