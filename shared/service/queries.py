"""Queries: a conversation and a batch as the HTTP API shows them, and readiness."""

from __future__ import annotations

from collections import Counter

from shared.domain.batch_documents import MAX_ITEMS
from shared.ports import Doc
from shared.service.core import Core


class Queries:
    """Read-only views; they never change a document."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def conversation(self, conversation_id: str) -> Doc | None:
        """The conversation with its stage records in the order they were written."""
        conversation = await self.core.conversations.get(conversation_id)
        return None if conversation is None else conversation.view()

    async def batch(self, batch_id: str) -> Doc | None:
        """The batch record with the statuses of the records its items became."""
        store, settings = self.core.store, self.core.settings
        record = await store.read(settings.batches_container, batch_id, partition_key=batch_id)
        if record is None:
            return None
        members = await store.query_eq(
            settings.conversations_container, "batchId", batch_id, limit=MAX_ITEMS
        )
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        view["statuses"] = dict(Counter(str(m.get("status")) for m in members))
        return view

    async def readiness(self) -> dict[str, str]:
        """Which dependencies can do their work; raises nothing. The store must take a write,
        not only answer: a store that reads but cannot write would lose every event."""
        checks: dict[str, str] = {}
        try:
            await self.core.store.writable()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"not writable: {exc.__class__.__name__}"
        return checks
