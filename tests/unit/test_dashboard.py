"""The dashboard's pages over a store filled by the real pipeline (scripted model), spans the
app exported through the OTLP encoding devhost receives, and a broker holding dead letters."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from devhost.appmodel import load_app
from devhost.broker import Broker
from devhost.dashboard import ROOT, Dashboard, auth, dashboard_url, span_settings
from devhost.dashboard.spans import SpanStore, decode_traces
from devhost.environment import PROJECT_ROOT, Workdir, app_settings
from devhost.http import build_http_app
from shared import bootstrap
from shared.config import Settings
from shared.domain.conversation import Conversation
from shared.telemetry import configure_telemetry, shutdown_telemetry
from tests.conftest import make_settings
from tests.support.drive import app_functions, drain, hub_event
from tests.support.fakes import (
    APPROVE,
    ESCALATION,
    INTENT_ANGRY,
    INTENT_REFUND,
    RecordingPublisher,
    ScriptedModel,
)

KEY = "d" * 43
HOSTILE = "<script>alert('pwned')</script>\"><img src=x onerror=alert(1)> ' onmouseover='alert(2)"
"""Text that would run script if any page rendered it unescaped, in an element or an
attribute (double- and single-quoted)."""
HOSTILE_REPLY = {"reply": "Sorry! " + HOSTILE}
EMAIL = "jane.doe@example.com"


class OtlpRoundTrip(SpanExporter):
    """Exports spans the way devhost receives them: encoded by the OTLP exporter's own encoder,
    decoded by the dashboard's receiver, kept in its span store."""

    def __init__(self, store: SpanStore) -> None:
        self.store = store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans).SerializeToString()
        self.store.add(decode_traces(body))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class _Scripts(HTMLParser):
    """Every <script> element and every event-handler attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name, value))


def _script_surface(html: str) -> _Scripts:
    parser = _Scripts()
    parser.feed(html)
    return parser


def _model() -> ScriptedModel:
    def answer(request: Any) -> Any:
        angry = request.customer_id == "cust-3"
        return {
            "intent": INTENT_ANGRY if angry else INTENT_REFUND,
            "response": HOSTILE_REPLY,
            "critic": APPROVE,
            "escalation": {**ESCALATION, "summary": "Escalated: " + HOSTILE},
        }[request.stage]

    return ScriptedModel(script=answer)


@pytest.fixture
async def populated(tmp_path: Path) -> AsyncIterator[tuple[Dashboard, Settings, SpanStore]]:
    workdir = Workdir(tmp_path).create()
    settings = make_settings(tmp_path)
    assert settings.sqlite_path == str(workdir.store)
    spans = SpanStore(tmp_path / "spans.sqlite3")
    configure_telemetry(settings, span_exporter=OtlpRoundTrip(spans))
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=_model())
    requests = [
        {"customerId": "cust-1", "text": "Refund for order A-1001 please", "channel": "email"},
        {"customerId": "cust-2", "text": HOSTILE + " write to " + EMAIL, "channel": "chat"},
        {"customerId": "cust-3", "text": "I am furious, get me a person", "channel": "web"},
    ]
    await app_functions()["ingest"](
        [hub_event(json.dumps(r).encode(), sequence=i + 1) for i, r in enumerate(requests)]
        + [hub_event(b"{not json " + HOSTILE.encode(), sequence=9)]
    )
    data = b'customer_id,text,channel\nb1,"Where is my parcel?",email\nb2,,chat\n'
    await app_functions()["ingest_batch"](
        func.blob.InputStream(data=data, name="batches/day1.csv", blob_properties={"ETag": "e"})
    )
    await drain(publisher, settings)
    with Broker(workdir.broker) as broker:
        for queue in ("intent", "response", "critic", "escalation"):
            broker.ensure_queue(queue)
        broker.ensure_queue("deadletter", max_delivery_count=10)
        broker.send(
            "deadletter",
            json.dumps({"text": HOSTILE, "mail": EMAIL}).encode(),
            message_id="dl-1",
            application_properties={
                "OriginalQueue": "intent",
                "OriginalMessageId": "poison-1",
                "DeadLetterReason": "InvalidInput",
                "DeadLetterErrorDescription": "bad envelope " + HOSTILE,
            },
        )
    dashboard = Dashboard(workdir, key=KEY, settings=settings)
    yield dashboard, settings, spans
    await dashboard.close()
    await bootstrap.shutdown()
    shutdown_telemetry()
    spans.close()


@pytest.fixture
async def client(
    populated: tuple[Dashboard, Settings, SpanStore],
) -> AsyncIterator[TestClient[Any, Any]]:
    dashboard, _, _ = populated
    root = web.Application()
    root.add_subapp(ROOT, dashboard.app)
    async with TestClient(TestServer(root, host="127.0.0.1")) as test_client:
        yield test_client


def _headers(client: TestClient[Any, Any]) -> dict[str, str]:
    return {"x-functions-key": KEY}


async def _page(client: TestClient[Any, Any], path: str, *, status: int = 200) -> str:
    response = await client.get(ROOT + path, headers=_headers(client))
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    return await response.text()


async def _conversations(dashboard: Dashboard) -> list[Conversation]:
    await dashboard.index.refresh()
    return list(dashboard.index.by_id.values())


async def test_the_flow_page_shows_every_stage_outcomes_and_cost(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, _ = populated
    counts = Counter(c.status for c in await _conversations(dashboard))
    assert (counts["answered"], counts["escalated"], counts["rejected"]) == (3, 1, 2)
    html = await _page(client, "/")
    for stage in ("intent agent", "response agent", "critic agent", "escalation agent"):
        assert stage in html
    for status in ("answered", "escalated", "rejected"):
        shown = f'{status}</dt><dd class="num status-{status}">{counts[status]}<'
        assert shown in html
    assert "scripted-intent" in html  # cost per deployment
    fragment = await client.get(ROOT + "/?fragment=1", headers=_headers(client))
    body = await fragment.text()
    assert "<html" not in body
    assert "intent agent" in body


async def test_the_list_searches_by_status_intent_customer_cost_and_latency(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, _ = populated
    everything = await _conversations(dashboard)
    answered = {c.id for c in everything if c.status == "answered"}
    html = await _page(client, "/conversations?status=answered")
    assert {m for m in re.findall(r"/conversations/(c-[^\"]+)\"", html)} == answered
    html = await _page(client, "/conversations?customer=cust-3")
    shown = set(re.findall(r"/conversations/(c-[^\"]+)\"", html))
    assert shown == {c.id for c in everything if c.customer_id == "cust-3"}
    assert "escalated" in html
    html = await _page(client, "/conversations?intent=refund_request&min_cost=0.002")
    assert set(re.findall(r"/conversations/(c-[^\"]+)\"", html)) == {
        c.id for c in everything if c.intent_label == "refund_request" and c.total.cost_usd >= 0.002
    }
    html = await _page(client, "/conversations?min_seconds=100000")
    assert "No conversation matches" in html
    html = await _page(client, "/conversations?min_cost=nonsense&sort=bogus&page=x")
    assert "0.0030" in html  # three calls at $0.001: the cost column


async def test_a_conversation_page_shows_its_waterfall_from_the_collected_spans(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, spans = populated
    (c,) = [c for c in await _conversations(dashboard) if c.customer_id == "cust-1"]
    assert c.trace_id
    collected = spans.for_trace(c.trace_id)
    assert {s.name for s in collected} >= {"ingest", "intent agent", "response agent"}
    html = await _page(client, f"/conversations/{c.id}")
    assert "Every span the app exported" in html
    for name in ("ingest", "intent agent", "response agent", "critic agent"):
        assert f'<span class="wf-name">{name}</span>' in html
    assert html.count('class="wf-bar"') == len(collected)
    assert "scripted-intent" in html
    assert "$0.0010" in html


async def test_a_conversation_without_spans_falls_back_to_its_stage_records(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, spans = populated
    (c,) = [c for c in await _conversations(dashboard) if c.customer_id == "cust-1"]
    assert spans._connection().execute("DELETE FROM spans").rowcount > 0
    html = await _page(client, f"/conversations/{c.id}")
    assert "the bars come from the stage records" in html
    assert html.count('class="wf-bar"') == len(c.stages)


async def test_hostile_text_renders_inert_on_every_page(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, _ = populated
    conversations = await _conversations(dashboard)
    hostile = [c for c in conversations if c.request and "<script>" in c.request.text]
    assert hostile, "the hostile request must have become a conversation"
    escalated = [c for c in conversations if c.status == "escalated"]
    pages = [
        "/",
        "/conversations",
        "/conversations?q=" + "%3Cscript%3E",
        f"/conversations/{hostile[0].id}",
        f"/conversations/{escalated[0].id}",
        "/deadletters",
        "/deadletters/replay",
        "/batches",
        "/rejections",
        "/escalations",
        f"/escalations/{escalated[0].work_item.id}" if escalated[0].work_item else "/escalations",
    ]
    seen_escaped = 0
    for path in pages:
        html = await _page(client, path)
        surface = _script_surface(html)
        # The only script is the dashboard's own file; no element carries an event handler.
        assert surface.scripts == [{"src": f"{ROOT}/static/dashboard.js", "defer": None}], path
        assert surface.handlers == [], path
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        seen_escaped += html.count("&lt;script&gt;alert(")
    assert seen_escaped >= 4  # the request, the reply, the escalation, the dead letter


async def test_dead_letters_show_a_redacted_body_and_replay_after_confirmation(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, settings, _ = populated
    html = await _page(client, "/deadletters")
    assert "poison-1" in html
    assert "InvalidInput" in html
    assert EMAIL not in html  # the body and description are shown redacted
    confirm = await _page(client, "/deadletters/replay?queue=deadletter&id=poison-1")
    assert "Yes, replay 1" in confirm
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', confirm)
    assert token is not None
    assert token.group(1) == auth.csrf_token(KEY)
    form = {"csrf": token.group(1), "queue": "deadletter", "id": "poison-1"}
    origin = f"http://{client.server.host}:{client.server.port}"

    refused = await client.post(ROOT + "/deadletters/replay", data=form, headers=_headers(client))
    assert refused.status == 403  # no Origin: not sent by a dashboard page
    forged = await client.post(
        ROOT + "/deadletters/replay",
        data={**form, "csrf": "0" * 64},
        headers={**_headers(client), "Origin": origin},
    )
    assert forged.status == 403
    elsewhere = await client.post(
        ROOT + "/deadletters/replay",
        data=form,
        headers={**_headers(client), "Origin": "http://evil.example"},
    )
    assert elsewhere.status == 403
    broker = dashboard.flow.broker()
    assert broker is not None
    assert len(broker.peek("deadletter")) == 1

    done = await client.post(
        ROOT + "/deadletters/replay",
        data=form,
        headers={**_headers(client), "Origin": origin},
        allow_redirects=False,
    )
    assert done.status == 303
    assert done.headers["Location"] == f"{ROOT}/deadletters?replayed=1"
    assert broker.peek("deadletter") == []
    (back,) = broker.peek(settings.queues.intent)
    assert back.message_id.startswith("poison-1:replay")
    assert "No dead letters" in await _page(client, "/deadletters")


async def test_batches_and_rejections_show_counts_and_reason_codes(
    client: TestClient[Any, Any],
) -> None:
    html = await _page(client, "/batches")
    assert "batches/day1.csv" in html
    assert re.search(r'<td class="num">2</td>\s*<td class="num">1</td>', html), html
    assert "missing_field" in html or "empty_text" in html or "wrong_type" in html
    rejections = await _page(client, "/rejections")
    assert "invalid_json" in rejections
    only = await _page(client, "/rejections?code=invalid_json")
    assert "invalid_json" in only
    assert "day1.csv" not in only


async def test_escalations_are_listed_claimed_and_resolved_from_the_pages(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, _ = populated
    (escalated,) = [c for c in await _conversations(dashboard) if c.status == "escalated"]
    item = escalated.work_item
    assert item is not None
    html = await _page(client, "/escalations")
    assert f"/escalations/{item.id}" in html
    assert item.team in html
    page = await _page(client, f"/escalations/{item.id}")
    assert ">Claim</button>" in page
    origin = f"http://{client.server.host}:{client.server.port}"
    headers = {**_headers(client), "Origin": origin}
    csrf = auth.csrf_token(KEY)

    forged = await client.post(
        f"{ROOT}/escalations/{item.id}/claim", data={"agent": "ann"}, headers=headers
    )
    assert forged.status == 403
    claimed = await client.post(
        f"{ROOT}/escalations/{item.id}/claim",
        data={"csrf": csrf, "agent": "ann"},
        headers=headers,
        allow_redirects=False,
    )
    assert claimed.status == 303
    assert claimed.headers["Location"].endswith("?done=claim")
    taken = await client.post(
        f"{ROOT}/escalations/{item.id}/claim",
        data={"csrf": csrf, "agent": "bob"},
        headers=headers,
    )
    assert "Not done:" in await taken.text()  # ann holds it
    held = await _page(client, f"/escalations/{item.id}")
    assert "Held by ann" in held
    assert ">Release</button>" in held
    resolved = await client.post(
        f"{ROOT}/escalations/{item.id}/resolve",
        data={"csrf": csrf, "agent": "ann", "reply": "Refunded. " + HOSTILE},
        headers=headers,
    )
    body = await resolved.text()
    assert "Done: resolve." in body
    assert "resolved by ann" in body
    assert "&lt;script&gt;alert(" in body
    after = await dashboard.index.get(escalated.id)
    assert after is not None
    assert after.status == "resolved_by_human"
    assert "No work items" in await _page(client, "/escalations")
    assert (
        await client.post(
            f"{ROOT}/escalations/{item.id}/delete", data={"csrf": csrf}, headers=headers
        )
    ).status == 404


async def test_the_key_is_required_and_traded_for_a_cookie(client: TestClient[Any, Any]) -> None:
    assert (await client.get(ROOT + "/")).status == 401
    assert (await client.get(ROOT + "/", headers={"x-functions-key": "x" * 43})).status == 401
    first = await client.get(ROOT + "/conversations?code=" + KEY, allow_redirects=False)
    assert first.status == 303
    assert first.headers["Location"] == ROOT + "/conversations"
    cookie = first.cookies[auth.COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert KEY not in cookie.value
    again = await client.get(ROOT + "/conversations")  # the client keeps the cookie
    assert again.status == 200
    rebound = await client.get(ROOT + "/", headers={**_headers(client), "Host": "evil.example"})
    assert rebound.status == 421


async def test_spans_are_received_over_otlp_with_the_key_only(
    client: TestClient[Any, Any], populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, spans = populated
    before = dashboard.spans.count()
    stored = spans.for_trace(
        spans._connection().execute("SELECT trace_id FROM spans").fetchone()[0]
    )
    assert stored
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    span = resource.scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex("ab" * 16)
    span.span_id = bytes.fromhex("cd" * 8)
    span.name = "intent agent"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000, 2_000
    attribute = span.attributes.add()
    attribute.key, attribute.value.string_value = "switchboard.conversation_id", "c-x"
    body = request.SerializeToString()
    path = ROOT + "/_otlp/v1/traces"
    assert (await client.post(path, data=body)).status == 401
    assert (await client.post(path, data=b"\xff\x00junk", headers=_headers(client))).status == 400
    assert (await client.post(path, data=body, headers=_headers(client))).status == 200
    assert dashboard.spans.count() == before + 1
    (kept,) = dashboard.spans.for_trace("ab" * 16)
    assert kept.conversation_id == "c-x"
    assert kept.duration_s == pytest.approx(1e-6)


async def test_the_dashboard_is_mounted_beside_the_api(
    tmp_path: Path, populated: tuple[Dashboard, Settings, SpanStore]
) -> None:
    dashboard, _, _ = populated
    model = load_app(
        PROJECT_ROOT, app_settings(Workdir(tmp_path / "dh"), simulator_url="http://127.0.0.1:1")
    )
    app = build_http_app(model, key=KEY, dashboard=dashboard.app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        url = dashboard_url(f"http://127.0.0.1:{api.server.port}/api", KEY)
        assert url == f"http://127.0.0.1:{api.server.port}/dashboard/?code={KEY}"
        response = await api.get("/dashboard?code=" + KEY)  # redirects, then trades the key
        assert response.status == 200
        assert "The pipeline, live" in await response.text()
        assert (await api.get("/api/health")).status == 200


def test_span_settings_point_the_exporter_at_the_dashboard_unless_one_is_chosen() -> None:
    chosen = span_settings(7071, KEY, {"TELEMETRY_EXPORTER": "none"})
    assert chosen["TELEMETRY_EXPORTER"] == "otlp"
    assert chosen["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:7071/dashboard/_otlp"
    assert chosen["OTEL_EXPORTER_OTLP_HEADERS"] == f"x-functions-key={KEY}"
    assert span_settings(7071, KEY, {"TELEMETRY_EXPORTER": "azuremonitor"}) == {}
    settings = Settings.from_env({**make_settings_env(), **chosen})
    assert settings.telemetry_exporter == "otlp"
    assert settings.otlp_endpoint == chosen["OTEL_EXPORTER_OTLP_ENDPOINT"]


def make_settings_env() -> dict[str, str]:
    from tests.conftest import TEST_ENV

    return {**TEST_ENV, "SQLITE_PATH": "/nonexistent/store.sqlite3"}
