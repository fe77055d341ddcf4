"""Escalations: the team's work queue and the changes a person makes to a work item.

Each change is one conditional write of the conversation (``ConversationRepository.update``):
two people claiming one item at once both read it open, one write lands, and the other's
retry reads it claimed and fails with ``WorkItemConflict`` (HTTP 409). A resolve's reply is an
outcome like any other: its outbox entry is written with it and sent after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.conversation import Conversation
from shared.domain.routing import Outcome
from shared.domain.workitem import WorkItem, WorkItemConflict, WorkItemStatus, conversation_of
from shared.service.core import Core
from shared.service.outbox import Outbox

MAX_QUEUE = 10_000
"""The most work items one listing reads before filtering and paging."""
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class WorkItemPage:
    items: list[WorkItem]
    page: int
    page_size: int
    total: int


class UnknownWorkItem(LookupError):
    """No work item has this id (HTTP 404)."""


class Escalations:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.outbox = Outbox(core)

    async def list(
        self,
        *,
        team: str | None = None,
        priority: str | None = None,
        status: WorkItemStatus | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> WorkItemPage:
        """Work items, urgent first, then oldest first; ``status`` None means open or claimed.

        Open and claimed items belong to conversations whose status is ``escalated``; resolved
        ones to ``resolved_by_human``: one equality query on the conversations either way.
        """
        wanted = {WorkItemStatus.OPEN, WorkItemStatus.CLAIMED} if status is None else {status}
        statuses = {
            Outcome.RESOLVED_BY_HUMAN.value if s is WorkItemStatus.RESOLVED else "escalated"
            for s in wanted
        }
        items: list[WorkItem] = []
        container = self.core.settings.conversations_container
        for conversation_status in sorted(statuses):
            docs = await self.core.store.query_eq(
                container, "status", conversation_status, limit=MAX_QUEUE
            )
            for doc in docs:
                item = Conversation.from_doc(doc).work_item
                if item is None or item.status not in wanted:
                    continue
                if team and item.team != team:
                    continue
                if priority and item.priority != priority:
                    continue
                items.append(item)
        items.sort(key=lambda i: i.rank)
        start = (page - 1) * page_size
        return WorkItemPage(items[start : start + page_size], page, page_size, len(items))

    async def get(self, work_item_id: str) -> tuple[WorkItem, Conversation]:
        conversation = await self._conversation(work_item_id)
        assert conversation.work_item is not None
        return conversation.work_item, conversation

    async def claim(self, work_item_id: str, agent: str) -> WorkItem:
        """Raises ``WorkItemConflict`` when someone else holds it (or it is resolved)."""
        now = self.core.clock()
        cid = await self._conversation_id(work_item_id)
        written = await self.core.conversations.update(cid, lambda c: c.claim(agent, now=now))
        return self._item(written, work_item_id)

    async def release(self, work_item_id: str, agent: str) -> WorkItem:
        now = self.core.clock()
        cid = await self._conversation_id(work_item_id)
        written = await self.core.conversations.update(cid, lambda c: c.release(agent, now=now))
        return self._item(written, work_item_id)

    async def resolve(self, work_item_id: str, agent: str, reply: str) -> WorkItem:
        """The reply becomes the outcome and leaves through the outbox."""
        now = self.core.clock()
        cid = await self._conversation_id(work_item_id)
        written = await self.core.conversations.update(
            cid, lambda c: c.resolve(agent, reply, now=now)
        )
        await self.outbox.flush(written)
        return self._item(written, work_item_id)

    async def _conversation_id(self, work_item_id: str) -> str:
        return (await self._conversation(work_item_id)).conversation_id

    async def _conversation(self, work_item_id: str) -> Conversation:
        cid = conversation_of(work_item_id)
        conversation = None if cid is None else await self.core.conversations.get(cid)
        if conversation is None or conversation.work_item is None:
            raise UnknownWorkItem(work_item_id)
        if conversation.work_item.id != work_item_id:
            raise WorkItemConflict(
                f"work item {work_item_id} is closed; the conversation's current one is "
                f"{conversation.work_item.id}"
            )
        return conversation

    @staticmethod
    def _item(conversation: Conversation, work_item_id: str) -> WorkItem:
        item = conversation.work_item
        assert item is not None
        assert item.id == work_item_id
        return item
