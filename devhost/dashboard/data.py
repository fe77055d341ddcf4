"""What the dashboard shows, read from a devhost workdir: broker, store, scaler state, simulator.

Conversations are read through the store port (``changed_since``) and the ``Conversation``
aggregate only; the dashboard keeps them in an index that each read brings up to date with the
documents written since the previous one, so a page of a 10,000-conversation list costs a
filter and a sort in memory, not a scan of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from devhost.broker import Broker
from devhost.dashboard.lanes import LaneQuota, accounting_text, lane_quotas
from devhost.environment import Workdir, running_host
from shared.adapters.local.sqlite_store import MAX_QUERY_LIMIT
from shared.config import Settings
from shared.domain.conversation import Conversation, StageRecord
from shared.domain.messages import Stage
from shared.ports import DocumentStore

SIMULATOR_ADMIN_KEY_FILE = "simulator-admin-key"  # devhost.host.SIMULATOR_ADMIN_KEY_FILE
SIMULATOR_ADMIN_HEADER = "x-sim-admin-key"
THROUGHPUT_WINDOW_S = 60.0
PAGE_SIZE = 50
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
        """Keep the aggregates of ``docs`` that changed since they were last read (by etag)."""
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


# --------------------------------------------------------------------------- flow


@dataclass
class FlowNode:
    """One box of the flow picture: a hub, a queue and the function that drains it."""

    name: str
    kind: str  # hub | queue | parking
    function: str = "-"
    backlog: int = 0
    scheduled: int = 0
    in_flight: int = 0
    dead_letters: int = 0
    instances: int = 0
    ceiling: int | None = None
    bound: str = "-"
    quota_cap: int | None = None
    seconds_per_call: float | None = None
    tokens_per_call: int | None = None
    per_minute: float = 0.0
    total: int = 0


@dataclass
class DeploymentQuota:
    name: str
    limit_tpm: int | None
    used_tpm: float | None = None
    requests: int = 0
    throttled: int = 0
    charged_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    accounting: str = ""
    faults: int = 0
    inferred: str = ""
    """The accounting the app's limiter learned from the answers' headers."""
    lanes: list[LaneQuota] = field(default_factory=list)

    @property
    def used_share(self) -> float | None:
        if self.used_tpm is None or not self.limit_tpm:
            return None
        return min(1.0, self.used_tpm / self.limit_tpm)


@dataclass
class Flow:
    running: bool
    pid: int | None
    hub: FlowNode | None
    ingest: FlowNode | None
    stages: list[FlowNode]
    parking: FlowNode | None
    outcomes: Counter[str]
    quotas: list[DeploymentQuota]
    simulator: str | None
    spans: int
    at: float = field(default_factory=time.time)


class Sampler:
    """Counters seen at each read, to turn running totals into rates over a window."""

    def __init__(self, window_s: float = THROUGHPUT_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def rate_per_minute(self, now: float, totals: dict[str, float]) -> dict[str, float]:
        self._samples.append((now, dict(totals)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return {name: 0.0 for name in totals}
        return {name: max(0.0, (v - old.get(name, v)) * 60.0 / span) for name, v in totals.items()}


class FlowReader:
    """The flow picture's numbers from the broker, ``state.json`` and the simulator."""

    def __init__(self, workdir: Workdir, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self._queues = Sampler()
        self._quota = Sampler()
        self._broker: Broker | None = None

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def broker(self) -> Broker | None:
        if self._broker is None and self.workdir.broker.exists():
            self._broker = Broker(self.workdir.broker)
        return self._broker

    async def read(
        self,
        outcomes: Counter[str],
        stage_ends: dict[str, int],
        spans: int,
        *,
        model_calls: Sequence[Mapping[str, Any]] = (),
        learned: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Flow:
        """The flow now; ``model_calls`` are the model-call span attributes of the last
        ``THROUGHPUT_WINDOW_S`` seconds (the lanes), ``learned`` the newest learned accounting
        per deployment."""
        now = time.time()
        host = running_host(self.workdir)
        functions: dict[str, Any] = (host or {}).get("functions", {})
        by_source = {str(info.get("source")): (name, info) for name, info in functions.items()}
        queues = self.settings.queues
        nodes: dict[str, FlowNode] = {}
        broker = self.broker()
        stats = broker.queue_stats() if broker is not None else {}
        rates = self._queues.rate_per_minute(
            now, {q: float(s.completed_total) for q, s in stats.items()}
        )
        for queue, s in stats.items():
            node = FlowNode(
                name=queue,
                kind="parking" if queue == queues.deadletter else "queue",
                backlog=s.active,
                scheduled=s.scheduled,
                in_flight=s.locked,
                dead_letters=s.deadlettered,
                per_minute=rates.get(queue, 0.0),
                total=s.completed_total,
            )
            _scaling(node, by_source.get(queue))
            nodes[queue] = node
        hub: FlowNode | None = None
        ingest: FlowNode | None = None
        if broker is not None:
            with contextlib.suppress(Exception):  # no hub declared yet
                partitions = broker.hub_stats(
                    self.settings.eventhub_name, self.settings.eventhub_consumer_group
                )
                hub = FlowNode(
                    name=self.settings.eventhub_name,
                    kind="hub",
                    backlog=sum(p.backlog for p in partitions.values()),
                    total=sum(p.last_sequence + 1 for p in partitions.values()),
                )
                ingest = FlowNode(name="ingest", kind="function", backlog=hub.backlog)
                _scaling(ingest, by_source.get(self.settings.eventhub_name))
                ingest.per_minute = stage_ends.get("ingest", 0) * 60.0 / THROUGHPUT_WINDOW_S
        stages = []
        for stage in Stage:
            node = nodes.get(queues.for_stage(stage)) or FlowNode(queues.for_stage(stage), "queue")
            if stage_ends:  # spans are collected: invocations that ended in the window
                node.per_minute = stage_ends.get(stage.value, 0) * 60.0 / THROUGHPUT_WINDOW_S
            stages.append(node)
        return Flow(
            running=host is not None,
            pid=(host or {}).get("pid"),
            hub=hub,
            ingest=ingest,
            stages=stages,
            parking=nodes.get(queues.deadletter),
            outcomes=outcomes,
            quotas=await self._quotas(
                now, (host or {}).get("simulator"), model_calls, learned or {}
            ),
            simulator=(host or {}).get("simulator"),
            spans=spans,
        )

    async def _quotas(
        self,
        now: float,
        simulator: str | None,
        model_calls: Sequence[Mapping[str, Any]],
        learned: Mapping[str, Mapping[str, Any]],
    ) -> list[DeploymentQuota]:
        limits: dict[str, int | None] = dict(self.settings.llm.deployment_tpm)
        stats = await self._simulator_stats(simulator) if simulator else None
        sim: dict[str, Any] = (stats or {}).get("deployments", {})
        config = (stats or {}).get("_config", {})
        charged = {name: float(d.get("charged_tokens", 0)) for name, d in sim.items()}
        rates = self._quota.rate_per_minute(now, charged) if stats is not None else {}
        quotas = []
        for name, configured in config.items():
            if limits.get(name) is None and configured.get("tpm"):
                limits[name] = int(configured["tpm"])
        by_lane = lane_quotas(model_calls, limits, window_s=THROUGHPUT_WINDOW_S)
        for name in sorted(set(limits) | set(sim) | set(by_lane)):
            d = sim.get(name, {})
            limit = limits.get(name)
            configured = config.get(name) or {}
            quotas.append(
                DeploymentQuota(
                    name=name,
                    limit_tpm=limit,
                    used_tpm=rates.get(name, 0.0) if stats is not None else None,
                    requests=int(d.get("requests", 0)),
                    throttled=int(d.get("rate_limited", 0)),
                    charged_tokens=int(d.get("charged_tokens", 0)),
                    prompt_tokens=int(d.get("prompt_tokens", 0)),
                    completion_tokens=int(d.get("completion_tokens", 0)),
                    accounting=str(configured.get("accounting", "")),
                    faults=int(d.get("faults_injected", 0)),
                    inferred=accounting_text(learned.get(name)),
                    lanes=by_lane.get(name, []),
                )
            )
        return quotas

    async def _simulator_stats(self, url: str) -> dict[str, Any] | None:
        """The simulator's counters and per-deployment limits, with its admin key; None when
        it does not answer (an external endpoint, a stopped host)."""
        try:
            key = (self.workdir.root / SIMULATOR_ADMIN_KEY_FILE).read_text().strip()
        except OSError:
            return None
        headers = {SIMULATOR_ADMIN_HEADER: key}
        timeout = aiohttp.ClientTimeout(total=1.0)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"{url}/_sim/stats", headers=headers) as response:
                    if response.status != 200:
                        return None
                    stats: dict[str, Any] = await response.json()
                async with session.get(f"{url}/_sim/config", headers=headers) as response:
                    if response.status == 200:
                        stats["_config"] = _deployment_config(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return stats


def _deployment_config(config: Any) -> dict[str, dict[str, Any]]:
    """Per deployment, its ``tpm`` and ``accounting`` from the simulator's configuration."""
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(config, dict):
        return found
    deployments = config.get("deployments")
    if isinstance(deployments, dict):
        for name, limits in deployments.items():
            if isinstance(limits, dict):
                found[str(name)] = limits
    return found


def _scaling(node: FlowNode, found: tuple[str, dict[str, Any]] | None) -> None:
    if found is None:
        return
    name, info = found
    node.function = name
    node.instances = int(info.get("instances", 0))
    ceilings = [int(info[k]) for k in ("max", "cap", "quotaCap") if info.get(k) is not None]
    node.ceiling = min(ceilings) if ceilings else None
    node.bound = str(info.get("bound") or "-")
    node.quota_cap = None if info.get("quotaCap") is None else int(info["quotaCap"])
    profile = info.get("profile") or {}
    if profile:
        node.seconds_per_call = float(profile.get("secondsPerInvocation", 0.0))
        node.tokens_per_call = int(profile.get("tokensPerInvocation", 0))


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
