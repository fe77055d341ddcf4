"""What the dashboard shows, read from a devhost workdir: broker, store, scaler state, simulator.

Conversations are read through the store port (``changed_since``) and the ``Conversation``
aggregate only; the dashboard keeps them in an index that each read brings up to date with the
documents written since the previous one, so a page of a 10,000-conversation list costs a
filter and a sort in memory, not a scan of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devhost.broker import Broker
from shared.adapters.local.sqlite_store import MAX_QUERY_LIMIT
from shared.domain.conversation import Conversation, StageRecord
from shared.domain.messages import Stage
from shared.ports import DocumentStore

PAGE_SIZE = 50
FREEZE_AFTER = 500
"""Conversations read at once after which the index freezes the collector's view (``_take``)."""
SORTS = ("newest", "cost", "latency")


# --------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class ConversationQuery:
    """A search of the conversations list; every field optional."""

    status: str = ""
    intent: str = ""
    customer: str = ""
    text: str = ""
    min_cost: float | None = None
    min_seconds: float | None = None
    sort: str = "newest"
    page: int = 1

    def matches(self, c: Conversation, haystack: Callable[[Conversation], str]) -> bool:
        """Whether ``c`` is found; ``haystack`` gives its searchable text, lower case."""
        if self.status and c.status != self.status:
            return False
        if self.intent and (c.intent_label or "") != self.intent:
            return False
        if self.customer and self.customer.lower() not in c.customer_id.lower():
            return False
        if self.text and self.text.lower() not in haystack(c):
            return False
        if self.min_cost is not None and c.total.cost_usd < self.min_cost:
            return False
        if self.min_seconds is not None:
            seconds = c.seconds_to_outcome()
            if seconds is None or seconds < self.min_seconds:
                return False
        return True

    def sort_key(self, c: Conversation) -> Any:
        if self.sort == "cost":
            return c.total.cost_usd
        if self.sort == "latency":
            return c.seconds_to_outcome() or -1.0
        return c.updated_at

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this search (with ``changes``), empty fields left out."""
        values = {
            "status": self.status,
            "intent": self.intent,
            "customer": self.customer,
            "q": self.text,
            "min_cost": "" if self.min_cost is None else f"{self.min_cost:g}",
            "min_seconds": "" if self.min_seconds is None else f"{self.min_seconds:g}",
            "sort": "" if self.sort == "newest" else self.sort,
            "page": "" if self.page == 1 else str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v}


def searchable(c: Conversation) -> str:
    """What a text search looks in, lower case: the id, the request, the outcome."""
    request = c.request.text if c.request else ""
    return "\n".join((c.id, request, c.summary(200))).lower()


@dataclass
class ConversationPage:
    rows: list[Conversation]
    total: int
    page: int
    pages: int
    statuses: Counter[str]
    intents: list[str]


class ConversationIndex:
    """Every conversation record of the store, as aggregates, kept current incrementally."""

    def __init__(self, store: DocumentStore, container: str) -> None:
        self.store = store
        self.container = container
        self.by_id: dict[str, Conversation] = {}
        self._etags: dict[str, str] = {}
        self._text: dict[str, str] = {}
        self._intent: dict[str, str] = {}
        """Each conversation's intent label, worked out once per version (the list's filter
        menu needs every one on every page)."""
        self._since = 0
        self._lock = asyncio.Lock()

    def _take(self, docs: list[dict[str, Any]]) -> None:
        """Keep the aggregates of ``docs`` that changed since they were last read (by etag).

        After a large read the process's objects are moved out of the cyclic collector's
        reach (``gc.freeze``): the index lives as long as the host, and a full collection
        walking 10,000 conversations' objects took some 350 ms, every few requests
        (``bench/dashboard.py``). Reference counting still frees a replaced aggregate."""
        taken = 0
        for doc in docs:
            etag = str(doc.get("_etag", ""))
            key = str(doc.get("id", ""))
            if etag and self._etags.get(key) == etag:
                continue
            conversation = Conversation.from_doc(doc)
            self.by_id[conversation.id] = conversation
            self._etags[key] = etag
            self._text[conversation.id] = searchable(conversation)
            self._intent[conversation.id] = conversation.intent_label or ""
            taken += 1
        if taken >= FREEZE_AFTER:
            gc.freeze()

    def haystack(self, conversation: Conversation) -> str:
        return self._text.get(conversation.id) or searchable(conversation)

    async def refresh(self) -> None:
        """Read the documents written since the last refresh (those of the last second again:
        the store's clock has a one-second grain). Building aggregates runs off the event loop,
        so a first read of many thousands does not hold up the host."""
        async with self._lock:
            page = 1000
            while True:
                docs = await self.store.changed_since(self.container, self._since, limit=page)
                await asyncio.to_thread(self._take, docs)
                newest = max((int(d.get("_ts", 0)) for d in docs), default=self._since)
                if len(docs) < page:
                    self._since = max(self._since, newest)
                    return
                if newest == self._since:
                    if page >= MAX_QUERY_LIMIT:
                        return  # more than a page written in one second: the rest next time
                    page = min(page * 4, MAX_QUERY_LIMIT)
                self._since = newest

    async def snapshot(self) -> list[Conversation]:
        """Every conversation record, current as of now."""
        await self.refresh()
        async with self._lock:  # no refresh is changing the index while it is copied
            return list(self.by_id.values())

    async def get(self, conversation_id: str) -> Conversation | None:
        await self.refresh()
        return self.by_id.get(conversation_id)

    async def search(
        self, query: ConversationQuery, *, page_size: int = PAGE_SIZE
    ) -> ConversationPage:
        everything = [c for c in await self.snapshot() if c.status != "rejected"]
        statuses = Counter(c.status for c in everything)
        labels = self._intent
        intents = sorted({label for c in everything if (label := labels.get(c.id, ""))})
        found = [c for c in everything if query.matches(c, self.haystack)]
        found.sort(key=query.sort_key, reverse=True)
        pages = max(1, -(-len(found) // page_size))
        page = min(max(1, query.page), pages)
        rows = found[(page - 1) * page_size : page * page_size]
        return ConversationPage(rows, len(found), page, pages, statuses, intents)

    async def rejections(
        self, *, code: str = "", batch: str = "", limit: int = 200
    ) -> list[Conversation]:
        found = [
            c
            for c in await self.snapshot()
            if c.status == "rejected"
            and (not code or c.reason_code == code)
            and (not batch or c.batch_id == batch)
        ]
        found.sort(key=lambda c: c.updated_at, reverse=True)
        return found[:limit]

    async def outcome_counts(self) -> Counter[str]:
        return Counter(c.status for c in await self.snapshot())


# --------------------------------------------------------------------------- cost


@dataclass
class CostLine:
    name: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, record: StageRecord) -> None:
        self.calls += record.usage.calls
        self.prompt_tokens += record.usage.prompt_tokens
        self.completion_tokens += record.usage.completion_tokens
        self.cost_usd += record.usage.cost_usd


@dataclass
class CostReport:
    by_stage: list[CostLine]
    by_deployment: list[CostLine]
    by_hour: list[CostLine]
    top: list[Conversation]
    total: CostLine


def cost_report(conversations: Iterable[Conversation], *, top: int = 5) -> CostReport:
    """Tokens and dollars per stage, per deployment (a stage record's first deployment), per
    hour the stage completed in, and the costliest conversations."""
    stages = {s.value: CostLine(s.value) for s in Stage}
    deployments: dict[str, CostLine] = {}
    hours: dict[str, CostLine] = {}
    total = CostLine("total")
    every = list(conversations)
    for c in every:
        for record in c.stages.values():
            stages[record.stage.value].add(record)
            deployment = record.usage.deployments[0] if record.usage.deployments else "-"
            deployments.setdefault(deployment, CostLine(deployment)).add(record)
            at = record.completed_at
            hour = f"{at.year:04d}-{at.month:02d}-{at.day:02d} {at.hour:02d}:00"
            hours.setdefault(hour, CostLine(hour)).add(record)
            total.add(record)
    costly = sorted((c for c in every if c.total.cost_usd > 0), key=lambda c: -c.total.cost_usd)
    return CostReport(
        by_stage=list(stages.values()),
        by_deployment=sorted(deployments.values(), key=lambda line: line.name),
        by_hour=sorted(hours.values(), key=lambda line: line.name)[-24:],
        top=costly[:top],
        total=total,
    )


# --------------------------------------------------------------------------- dead letters


@dataclass(frozen=True)
class DeadLetterRow:
    """A dead letter: parked by the pipeline (``deadletter`` queue) or dead-lettered by the
    broker after MaxDeliveryCount (a queue's ``$deadletterqueue``)."""

    where: str  # the queue it is listed under: the parking queue or the dead-lettering queue
    origin: str  # the queue the message was meant for
    message_id: str
    reason: str
    description: str
    deliveries: int
    at: float
    body: bytes
    parked: bool

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S") if self.at else "-"


def dead_letters(broker: Broker | None, parking: str, *, limit: int = 500) -> list[DeadLetterRow]:
    rows: list[DeadLetterRow] = []
    if broker is None:
        return rows
    for queue in broker.queues():
        for dead in broker.deadletters(queue, limit=limit):
            rows.append(
                DeadLetterRow(
                    where=queue,
                    origin=queue,
                    message_id=dead.message_id,
                    reason=dead.reason,
                    description=dead.description,
                    deliveries=dead.delivery_count,
                    at=dead.dead_lettered_time,
                    body=dead.body,
                    parked=False,
                )
            )
        if queue == parking:
            for msg in broker.peek(parking, limit=limit):
                props = msg.application_properties
                rows.append(
                    DeadLetterRow(
                        where=parking,
                        origin=str(props.get("OriginalQueue", "?")),
                        message_id=str(props.get("OriginalMessageId", msg.message_id)),
                        reason=str(props.get("DeadLetterReason", "")),
                        description=str(props.get("DeadLetterErrorDescription", "")),
                        deliveries=msg.delivery_count,
                        at=msg.enqueued_time,
                        body=msg.body,
                        parked=True,
                    )
                )
    rows.sort(key=lambda r: r.at, reverse=True)
    return rows


def replay(broker: Broker, parking: str, *, queue: str | None, message_id: str | None) -> int:
    """Send dead letters back: one (``queue`` and ``message_id``), a queue's, or all."""
    ids = [message_id] if message_id else None
    queues = [queue] if queue else broker.queues()
    replayed = 0
    for name in queues:
        if name == parking:
            replayed += broker.replay_parked(parking, original_ids=ids)
        else:
            replayed += broker.replay_deadletters(name, message_ids=ids)
    return replayed


def pretty_body(body: bytes, *, limit: int = 4000) -> str:
    """A message body as text for reading: JSON indented, the rest decoded with replacement."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return (
        text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"
    )
