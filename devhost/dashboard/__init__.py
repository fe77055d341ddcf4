"""devhost's dashboard: the pipeline in a browser, served by the host on 127.0.0.1.

Server-rendered pages (jinja2, autoescaping every value: customer text, ids and message bodies
are hostile input), kept live by a small script that re-fetches marked regions every two
seconds; no build step. Pages: the flow (hub → ingest → queues → agents → outcomes, quota per
deployment, cost), conversations (search, and each one's trace waterfall), dead letters (replay
after confirmation), batches, rejections, escalations (the teams' work queue). Read-only, but for
replays and work-item actions: POSTs from dashboard pages (see :mod:`devhost.dashboard.auth`).

:class:`Dashboard` is mounted under ``/dashboard/`` on the host's HTTP server
(``devhost.http.start_http``) and also receives the app's spans (``/dashboard/_otlp``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from devhost.dashboard import auth, data, waterfall
from devhost.dashboard.flow import THROUGHPUT_WINDOW_S, Flow, FlowReader
from devhost.dashboard.spans import (
    OTLP_PATH,
    SPANS_FILE,
    SpanStore,
    UnreadableExport,
    decode_traces,
    telemetry_settings,
)
from devhost.environment import Workdir, open_store
from devhost.http import KEY_HEADER
from shared import bootstrap
from shared.config import Settings
from shared.domain.request_contract import RejectionCode
from shared.domain.routing import Outcome
from shared.domain.workitem import WorkItemConflict, WorkItemStatus
from shared.service.escalations import Escalations, UnknownWorkItem
from shared.telemetry.redaction import redact

log = logging.getLogger(__name__)

ROOT = "/dashboard"
HERE = Path(__file__).parent
POLL_MS = 2000
COST_EVERY_S = 10.0
"""How often the flow page adds up the cost again (it reads every stage record)."""
STATUSES = (*(o.value for o in Outcome), "in_progress", "received")
"""Conversation statuses, in the order the pages list them."""
ACTIONS = ("claim", "release", "resolve")
PAGES = (
    ("overview", "Flow", "/"),
    ("conversations", "Conversations", "/conversations"),
    ("deadletters", "Dead letters", "/deadletters"),
    ("batches", "Batches", "/batches"),
    ("rejections", "Rejections", "/rejections"),
    ("escalations", "Escalations", "/escalations"),
)
__all__ = ["ROOT", "Dashboard", "dashboard_url", "span_settings"]


def span_settings(http_port: int, key: str, settings_env: Mapping[str, str]) -> dict[str, str]:
    """App settings that make a process export its spans to the dashboard of the host serving
    HTTP on ``http_port`` (empty when the user chose an exporter: see ``telemetry_settings``)."""
    return telemetry_settings(f"http://127.0.0.1:{http_port}{ROOT}", key, settings_env)


def dashboard_url(http_base: str, key: str) -> str:
    """The address to open: ``http_base`` is the host's ``http://127.0.0.1:PORT`` (an ``/api``
    suffix is dropped), and the key is passed once, to be swapped for a cookie."""
    base = http_base.rstrip("/").removesuffix("/api")
    return f"{base}{ROOT}/?{urlencode({'code': key})}"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _when(value: datetime | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = _usd
    env.filters["seconds"] = _seconds
    env.filters["when"] = _when
    env.filters["redact"] = redact
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    return env


class Dashboard:
    """The dashboard of one workdir: its aiohttp application and what it reads."""

    def __init__(self, workdir: Workdir, *, key: str, settings: Settings) -> None:
        self.workdir = workdir
        self.key = key
        self.settings = settings
        self.store = open_store(workdir, settings)
        self.index = data.ConversationIndex(self.store, settings.conversations_container)
        self.flow = FlowReader(workdir, settings)
        self.spans = SpanStore(workdir.root / SPANS_FILE)
        self.templates = _environment()
        self._costs: tuple[float, data.CostReport] | None = None
        self.app = self._build_app()

    async def close(self) -> None:
        await self.store.close()
        self.flow.close()
        self.spans.close()

    # ----------------------------------------------------------------- application

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[auth.middleware(self.key, cookie_path=ROOT)])
        r = app.router
        r.add_get("/", self.overview)
        r.add_get("/conversations", self.conversations)
        r.add_get("/conversations/{id}", self.conversation)
        r.add_get("/deadletters", self.deadletters)
        r.add_get("/deadletters/replay", self.replay_confirm)
        r.add_post("/deadletters/replay", self.replay)
        r.add_get("/batches", self.batches)
        r.add_get("/rejections", self.rejections)
        r.add_get("/escalations", self.escalations)
        r.add_get("/escalations/{id}", self.work_item)
        r.add_post("/escalations/{id}/{action}", self.act)
        r.add_post(OTLP_PATH + "/v1/traces", self.receive_traces)
        r.add_post(OTLP_PATH + "/v1/metrics", self.receive_metrics)
        r.add_static("/static", HERE / "static")
        return app

    def _render(
        self, request: web.Request, template: str, *, page: str, title: str, **values: Any
    ) -> web.Response:
        fragment = request.query.get("fragment") == "1"
        name = f"fragments/{template}" if fragment else f"{template}"
        html = self.templates.get_template(name).render(
            page=page,
            title=title,
            pages=PAGES,
            root=ROOT,
            csrf=auth.csrf_token(self.key),
            poll_ms=POLL_MS,
            request_path=request.path,
            query=request.query_string,
            now=datetime.now(UTC),
            statuses=STATUSES,
            **values,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    # ----------------------------------------------------------------- pages

    async def overview(self, request: web.Request) -> web.Response:
        flow = await self._flow()
        now = time.monotonic()
        if self._costs is None or now - self._costs[0] >= COST_EVERY_S:
            everything = await self.index.snapshot()
            self._costs = (now, await asyncio.to_thread(data.cost_report, everything))
        costs = self._costs[1]
        return self._render(
            request, "overview.html", page="overview", title="Flow", flow=flow, costs=costs
        )

    async def _flow(self) -> Flow:
        outcomes = await self.index.outcome_counts()
        ends = await asyncio.to_thread(self.spans.stage_throughput, window_s=THROUGHPUT_WINDOW_S)
        count = await asyncio.to_thread(self.spans.count)
        calls = await asyncio.to_thread(self.spans.model_calls, window_s=THROUGHPUT_WINDOW_S)
        learned = await asyncio.to_thread(self.spans.learned_accounting)
        return await self.flow.read(outcomes, ends, count, model_calls=calls, learned=learned)

    async def conversations(self, request: web.Request) -> web.Response:
        query = _conversation_query(request.query)
        found = await self.index.search(query)
        return self._render(
            request,
            "conversations.html",
            page="conversations",
            title="Conversations",
            search=query,
            found=found,
            sorts=data.SORTS,
            page_link=lambda n: f"{ROOT}/conversations?" + urlencode(query.params(page=n)),
        )

    async def conversation(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        conversation = await self.index.get(cid)
        if conversation is None:
            missing = self._render(
                request, "missing.html", page="conversations", title="Not found", what=cid
            )
            missing.set_status(404)
            return missing
        spans = await asyncio.to_thread(
            self.spans.for_trace, conversation.trace_id or "-", conversation_id=conversation.id
        )
        return self._render(
            request,
            "conversation.html",
            page="conversations",
            title=conversation.id,
            c=conversation,
            records=conversation.records_in_order(),
            fall=waterfall.build(conversation, spans),
            spans_collected=bool(spans),
        )

    async def deadletters(self, request: web.Request) -> web.Response:
        rows = data.dead_letters(self.flow.broker(), self.settings.queues.deadletter)
        replayed = request.query.get("replayed")
        return self._render(
            request,
            "deadletters.html",
            page="deadletters",
            title="Dead letters",
            rows=rows,
            replayed=int(replayed) if replayed and replayed.isdigit() else None,
            body=lambda row: redact(data.pretty_body(row.body)),
        )

    async def replay_confirm(self, request: web.Request) -> web.Response:
        queue = request.query.get("queue", "")
        message_id = request.query.get("id", "")
        rows = data.dead_letters(self.flow.broker(), self.settings.queues.deadletter)
        chosen = [
            r
            for r in rows
            if (not queue or r.where == queue) and (not message_id or r.message_id == message_id)
        ]
        return self._render(
            request,
            "replay.html",
            page="deadletters",
            title="Replay dead letters",
            queue=queue,
            message_id=message_id,
            chosen=chosen,
        )

    async def replay(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        queue = str(form.get("queue", "")) or None
        message_id = str(form.get("id", "")) or None
        broker = self.flow.broker()
        replayed = 0
        if broker is not None:
            replayed = data.replay(
                broker, self.settings.queues.deadletter, queue=queue, message_id=message_id
            )
        log.info("dashboard: replayed %d dead letters", replayed)
        return web.Response(
            status=303, headers={"Location": f"{ROOT}/deadletters?replayed={replayed}"}
        )

    async def batches(self, request: web.Request) -> web.Response:
        docs = await self.store.latest(self.settings.batches_container, limit=200)
        return self._render(request, "batches.html", page="batches", title="Batches", batches=docs)

    async def rejections(self, request: web.Request) -> web.Response:
        code = request.query.get("code", "")
        batch = request.query.get("batch", "")
        rows = await self.index.rejections(code=code, batch=batch)
        return self._render(
            request,
            "rejections.html",
            page="rejections",
            title="Rejections",
            rows=rows,
            code=code,
            batch=batch,
            codes=[c.value for c in RejectionCode],
        )

    async def escalations(self, request: web.Request) -> web.Response:
        team = request.query.get("team", "")[:80]
        priority = request.query.get("priority", "")[:40]
        status = request.query.get("status", "")
        wanted = (
            {WorkItemStatus(status)}
            if status in {s.value for s in WorkItemStatus}
            else {WorkItemStatus.OPEN, WorkItemStatus.CLAIMED}
        )
        everything = [c.work_item for c in await self.index.snapshot() if c.work_item is not None]
        items = sorted(
            (
                i
                for i in everything
                if i.status in wanted
                and (not team or i.team == team)
                and (not priority or i.priority == priority)
            ),
            key=lambda i: i.rank,
        )
        return self._render(
            request,
            "escalations.html",
            page="escalations",
            title="Escalations",
            items=items[:500],
            total=len(items),
            team=team,
            priority=priority,
            status=status,
            teams=sorted({i.team for i in everything}),
            priorities=sorted({i.priority for i in everything}),
            item_statuses=[s.value for s in WorkItemStatus],
        )

    async def work_item(self, request: web.Request) -> web.Response:
        work_item_id = request.match_info["id"]
        try:
            item, conversation = await (await self._desk()).get(work_item_id)
        except (UnknownWorkItem, WorkItemConflict):
            missing = self._render(
                request, "missing.html", page="escalations", title="Not found", what=work_item_id
            )
            missing.set_status(404)
            return missing
        return self._render(
            request,
            "work_item.html",
            page="escalations",
            title=item.id,
            item=item,
            c=conversation,
            done=request.query.get("done", "")[:20],
            problem=request.query.get("problem", "")[:300],
        )

    async def act(self, request: web.Request) -> web.StreamResponse:
        """Claim, release or resolve a work item, as the person the form names."""
        work_item_id = request.match_info["id"]
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise web.HTTPNotFound()
        form = await request.post()
        agent = str(form.get("agent", "")).strip()
        reply = str(form.get("reply", "")).strip()
        desk = await self._desk()
        back = f"{ROOT}/escalations/{work_item_id}"
        try:
            if action == "claim":
                await desk.claim(work_item_id, agent)
            elif action == "release":
                await desk.release(work_item_id, agent)
            else:
                if not reply:
                    raise ValueError("a resolve needs the reply to send to the customer")
                await desk.resolve(work_item_id, agent, reply)
        except UnknownWorkItem:
            raise web.HTTPNotFound() from None
        except (WorkItemConflict, ValueError) as exc:
            query = urlencode({"problem": str(exc)})
            return web.Response(status=303, headers={"Location": f"{back}?{query}"})
        log.info("dashboard: %s %s by %s", action, work_item_id, agent)
        return web.Response(status=303, headers={"Location": f"{back}?done={action}"})

    async def _desk(self) -> Escalations:
        """The teams' work queue: the app's own use case, built by the composition root."""
        return (await bootstrap.get_services()).pipeline.escalations

    # ----------------------------------------------------------------- spans

    async def receive_traces(self, request: web.Request) -> web.Response:
        if not auth._equal(request.headers.get(KEY_HEADER), self.key):
            return web.Response(status=401)
        body = await request.read()
        try:
            spans = decode_traces(body, encoding=request.headers.get("Content-Encoding"))
        except UnreadableExport as exc:
            return web.Response(status=400, text=str(exc))
        try:
            await asyncio.to_thread(self.spans.add, spans)
        except Exception:
            log.exception("could not keep %d spans", len(spans))
            return web.Response(status=503)
        return web.Response(status=200, content_type="application/x-protobuf")

    async def receive_metrics(self, request: web.Request) -> web.Response:
        if not auth._equal(request.headers.get(KEY_HEADER), self.key):
            return web.Response(status=401)
        await request.read()  # the app's metrics are not shown; accepted so nothing retries
        return web.Response(status=200, content_type="application/x-protobuf")


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and number == number and number != float("inf") else None


def _conversation_query(params: Mapping[str, str]) -> data.ConversationQuery:
    page = params.get("page", "1")
    sort = params.get("sort", "newest")
    return data.ConversationQuery(
        status=params.get("status", "")[:40],
        intent=params.get("intent", "")[:80],
        customer=params.get("customer", "")[:128],
        text=params.get("q", "")[:200],
        min_cost=_float(params.get("min_cost")),
        min_seconds=_float(params.get("min_seconds")),
        sort=sort if sort in data.SORTS else "newest",
        page=int(page) if page.isdigit() and len(page) < 7 else 1,
    )
