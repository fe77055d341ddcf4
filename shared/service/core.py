"""What every use case shares: the ports, the settings, the clock, the conversation repository
and the outbound messages. Built once per pipeline by :class:`~shared.service.pipeline.Pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.concurrency import write_conditionally
from shared.config import Settings
from shared.domain.conversation import Conversation
from shared.domain.messages import Envelope, short_hash
from shared.errors import PermanentError, TransientError
from shared.ports import ChatModel, Doc, DocumentStore, OutboundMessage, Publisher
from shared.telemetry import metrics

log = logging.getLogger(__name__)


class ConversationRepository:
    """Conversations in the store: the aggregate in, the aggregate out. The JSON document is
    made and read here and nowhere else in the service layer."""

    def __init__(self, store: DocumentStore, container: str) -> None:
        self._store = store
        self._container = container

    async def get(self, conversation_id: str) -> Conversation | None:
        doc = await self._store.read(
            self._container, conversation_id, partition_key=conversation_id
        )
        return None if doc is None else Conversation.from_doc(doc)

    async def create(self, conversation: Conversation) -> None:
        """Record a new conversation; ``Conflict`` when it is already there."""
        await self._store.create(self._container, conversation.to_doc())

    async def put(self, conversation: Conversation) -> None:
        """Record ``conversation`` whatever is there (rejections: the same input, same record)."""
        await self._store.upsert(self._container, conversation.to_doc())

    async def update(
        self, conversation_id: str, change: Callable[[Conversation], Conversation | None]
    ) -> Conversation:
        """Apply ``change`` to the freshest copy until the conditional write lands; ``change``
        returns None when there is nothing (left) to do."""

        def build(current: Doc | None) -> Doc | None:
            if current is None:
                raise TransientError(f"conversation {conversation_id} vanished during a write")
            changed = change(Conversation.from_doc(current))
            return None if changed is None else changed.to_doc()

        doc = await write_conditionally(
            self._store, self._container, conversation_id, build, what=conversation_id
        )
        assert doc is not None  # build never returns None for a missing document
        return Conversation.from_doc(doc)


@dataclass(frozen=True)
class Outbound:
    """Messages the pipeline sends: the next stage's envelope, or a parked message."""

    settings: Settings
    publisher: Publisher
    clock: Callable[[], datetime]

    async def send(self, env: Envelope, *, scheduled: datetime | None = None) -> None:
        await self.publisher.send(
            OutboundMessage(
                queue=self.settings.queues.for_stage(env.stage),
                body=env.to_bytes(),
                message_id=env.message_id,
                correlation_id=env.conversation_id,
                subject=env.stage.value,
                application_properties=_properties(env),
                scheduled_enqueue_time=scheduled,
            )
        )

    async def dead_letter(
        self,
        queue: str,
        body: bytes,
        message_id: str,
        exc: PermanentError,
        *,
        conversation_id: str | None,
    ) -> None:
        """Park the message, body intact, on the dead-letter queue with its reason."""
        await self.publisher.send(
            OutboundMessage(
                queue=self.settings.queues.deadletter,
                body=body,
                message_id="dl-" + short_hash(queue, message_id, length=32),
                correlation_id=conversation_id or "",
                subject="deadletter",
                application_properties={
                    "DeadLetterReason": exc.reason_code,
                    "DeadLetterErrorDescription": exc.description[:1024],
                    "OriginalQueue": queue,
                    "OriginalMessageId": message_id,
                    "DeadLetteredAt": self.clock().isoformat(),
                },
            )
        )
        metrics.deadlettered(queue, exc.reason_code)
        log.warning("message %s from %s dead-lettered: %s", message_id, queue, exc.reason_code)


@dataclass(frozen=True)
class Core:
    """The dependencies of every use case."""

    settings: Settings
    store: DocumentStore
    llm: ChatModel
    clock: Callable[[], datetime]
    conversations: ConversationRepository
    outbound: Outbound

    @classmethod
    def build(
        cls,
        *,
        settings: Settings,
        store: DocumentStore,
        publisher: Publisher,
        llm: ChatModel,
        clock: Callable[[], datetime],
    ) -> Core:
        return cls(
            settings=settings,
            store=store,
            llm=llm,
            clock=clock,
            conversations=ConversationRepository(store, settings.conversations_container),
            outbound=Outbound(settings, publisher, clock),
        )


def _properties(env: Envelope) -> dict[str, str | int]:
    props: dict[str, str | int] = {
        "conversationId": env.conversation_id,
        "stage": env.stage.value,
        "revision": env.revision,
        "priority": env.priority.value,
        "attempt": env.attempt,
    }
    if env.traceparent:
        props["traceparent"] = env.traceparent
        # What the Service Bus SDKs and the Functions host read the trace context from: the
        # host's invocation (and its OperationId in Application Insights) continues this trace.
        props["Diagnostic-Id"] = env.traceparent
    if env.batch_id:
        props["batchId"] = env.batch_id
    return props
