"""Ports: the few small interfaces the core needs from the outside world.

Each has a real adapter for Azure and one for local use that tests and devhost share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

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

    async def changed_since(self, container: str, since: int, *, limit: int = 1000) -> list[Doc]:
        """Up to ``limit`` documents of ``container`` last written at or after ``since`` (the
        store's ``_ts``, epoch seconds), oldest first."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...

    async def writable(self) -> None:
        """Raise unless a small write reaches the store (a probe row or item, rewritten)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class OutboundMessage:
    """A message ready for a queue or a topic: the body plus the broker properties the pipeline
    relies on. ``queue`` names the entity; ``to_topic`` says it is a topic (its subscriptions
    select by the application properties)."""

    queue: str
    body: bytes
    message_id: str
    correlation_id: str
    subject: str = ""
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    scheduled_enqueue_time: datetime | None = None
    content_type: str = "application/json"
    to_topic: bool = False


class Publisher(Protocol):
    """Sends messages to named queues and topics. Duplicate ``message_id``s are dropped by the
    broker (per queue, per topic)."""

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


@dataclass
class Usage:
    """Tokens and cost of every model call one stage made (a repair is a second call)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    cached_calls: int = 0
    model_seconds: float = 0.0
    """Time spent waiting for the model's answers (each call's ``latency_s``)."""
    deployments: list[str] = field(default_factory=list)
    by_deployment: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Prompt tokens, completion tokens and cost per deployment that answered."""

    def add(self, result: ChatResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cost_usd += result.cost_usd
        self.calls += 1
        self.cached_calls += int(result.cached)
        self.model_seconds += result.latency_s
        if result.deployment not in self.deployments:
            self.deployments.append(result.deployment)
        prompt, completion, cost = self.by_deployment.get(result.deployment, (0, 0, 0.0))
        self.by_deployment[result.deployment] = (
            prompt + result.prompt_tokens,
            completion + result.completion_tokens,
            cost + result.cost_usd,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "costUsd": round(self.cost_usd, 8),
            "calls": self.calls,
            "cachedCalls": self.cached_calls,
            "modelSeconds": round(self.model_seconds, 4),
            "deployments": list(self.deployments),
        }
