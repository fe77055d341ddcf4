"""Ports: the few small interfaces the core needs from the outside world.

Each has a real adapter for Azure and one for local use that tests and devhost share.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.errors import Conflict, NotFound, PreconditionFailed, TransientError

Doc = dict[str, Any]
"""A stored JSON document. Reads return it with an ``_etag`` key (the version token)."""

PropertyValue = str | int | float | bool


class DocumentStore(Protocol):
    """Conditional document storage, shaped after the Cosmos DB item API.

    Every container has one partition-key path (``/conversationId``, ``/batchId``); the adapter
    reads the key from the document itself on writes.
    """

    async def read(self, container: str, item_id: str, *, partition_key: str) -> Doc | None:
        """Return the document, or None when it does not exist."""
        ...

    async def create(self, container: str, doc: Doc) -> Doc:
        """Insert a new document; raise ``Conflict`` when one with the same id exists."""
        ...

    async def replace(self, container: str, doc: Doc, *, etag: str) -> Doc:
        """Overwrite the document only if it is still at ``etag``.

        Raises ``PreconditionFailed`` on a stale etag and ``NotFound`` when it is gone.
        """
        ...

    async def upsert(self, container: str, doc: Doc) -> Doc:
        """Insert or overwrite unconditionally."""
        ...

    async def query_eq(
        self,
        container: str,
        field_name: str,
        value: PropertyValue,
        *,
        partition_key: str | None = None,
        limit: int = 1000,
    ) -> list[Doc]:
        """Return the documents whose top-level ``field_name`` equals ``value`` (parameterised)."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...

    async def writable(self) -> None:
        """Raise unless a small write reaches the store (a probe row or item, rewritten)."""
        ...

    async def close(self) -> None: ...


async def write_conditionally(
    store: DocumentStore,
    container: str,
    doc_id: str,
    build: Callable[[Doc | None], Doc],
    *,
    what: str,
    attempts: int = 8,
) -> Doc:
    """Create or replace the document ``doc_id`` (its own partition key) with ``build(current)``,
    conditional on the version read (``current`` is None when there is none yet). When another
    writer gets in first, read again and rebuild, after a short random pause so the two do not
    collide again; ``TransientError`` after ``attempts`` lost races."""
    for race in range(attempts):
        current = await store.read(container, doc_id, partition_key=doc_id)
        body = build(current)
        try:
            if current is None:
                await store.create(container, body)
            else:
                await store.replace(container, body, etag=current["_etag"])
            return body
        except (Conflict, PreconditionFailed, NotFound):
            await asyncio.sleep(random.uniform(0, 0.02 * (race + 1)))
    raise TransientError(f"{what}: too much write contention")


@dataclass(frozen=True)
class OutboundMessage:
    """A message ready for a queue: the body plus the broker properties the pipeline relies on."""

    queue: str
    body: bytes
    message_id: str
    correlation_id: str
    subject: str = ""
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    scheduled_enqueue_time: datetime | None = None
    content_type: str = "application/json"


class Publisher(Protocol):
    """Sends messages to named queues. Duplicate ``message_id``s are dropped by the broker."""

    async def send(self, message: OutboundMessage) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion call as the agents see it: no transport, no deployment choice."""

    stage: str
    messages: list[dict[str, str]]
    schema_name: str
    json_schema: dict[str, Any] | None
    max_tokens: int
    temperature: float = 0.0
    conversation_id: str = ""
    customer_id: str = ""


@dataclass(frozen=True)
class ChatResult:
    """The model's answer with the accounting every stage record keeps."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    deployment: str
    model: str = ""
    cost_usd: float = 0.0
    cached: bool = False
    latency_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatModel(Protocol):
    """A chat-completion endpoint.

    Raises ``ContentFiltered`` (final), ``RetryLater`` (wait too long to hold a message lock),
    ``TransientError`` (worth another delivery) or ``BudgetExceeded``.
    """

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    async def close(self) -> None: ...
