"""The pipeline: the one object the triggers and devhost call, over the use cases.

``ingest`` turns events and documents into records, ``stages`` runs the agents' messages,
``queries`` answers the HTTP API, ``escalations`` is the teams' work queue. Built once per
process by ``shared.bootstrap``; every dependency is a port, so nothing here knows which
transport, store or model it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from shared.config import Settings
from shared.domain.messages import Stage, utcnow
from shared.ports import ChatModel, Doc, DocumentStore, Publisher
from shared.service.core import Core
from shared.service.escalations import Escalations
from shared.service.ingest import BatchReport, HttpVerdict, IncomingEvent, Ingest, IngestReport
from shared.service.queries import Queries
from shared.service.stages import MAX_DELIVERY_COUNT, Handled, Stages

__all__ = [
    "MAX_DELIVERY_COUNT",
    "BatchReport",
    "Handled",
    "HttpVerdict",
    "IncomingEvent",
    "IngestReport",
    "Pipeline",
]


class Pipeline:
    """The core's entry points. Every dependency is passed in by name."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: DocumentStore,
        publisher: Publisher,
        llm: ChatModel,
        clock: Callable[[], datetime] = utcnow,
        max_delivery_count: int = MAX_DELIVERY_COUNT,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.llm = llm
        core = Core.build(settings=settings, store=store, publisher=publisher, llm=llm, clock=clock)
        self.ingest = Ingest(core)
        self.stages = Stages(core, max_delivery_count=max_delivery_count)
        self.queries = Queries(core)
        self.escalations = Escalations(core)

    async def ingest_events(self, events: Sequence[IncomingEvent]) -> IngestReport:
        return await self.ingest.events(events)

    async def ingest_http(
        self, body: bytes, *, request_id: str, traceparent: str | None = None
    ) -> HttpVerdict:
        return await self.ingest.http(body, request_id=request_id, traceparent=traceparent)

    async def ingest_document(self, name: str, etag: str, data: bytes) -> BatchReport:
        return await self.ingest.document(name, etag, data)

    async def handle(
        self, body: bytes, *, stage: Stage, message_id: str, delivery_count: int = 1
    ) -> Handled:
        return await self.stages.handle(
            body, stage=stage, message_id=message_id, delivery_count=delivery_count
        )

    async def conversation(self, conversation_id: str) -> Doc | None:
        return await self.queries.conversation(conversation_id)

    async def batch(self, batch_id: str) -> Doc | None:
        return await self.queries.batch(batch_id)

    async def readiness(self) -> dict[str, str]:
        return await self.queries.readiness()
