"""The dashboard on a running devhost: every page over real conversations, spans and dead
letters; then in headless Chromium: the flow updating, a waterfall with every stage, hostile
text inert, a dead letter replayed from the page. Screenshots go to ``$DASHBOARD_SCREENSHOTS``
(default: the test's temporary folder)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.dashboard import dashboard_url
from devhost.host import Host, SimulatorOptions
from shared.domain.messages import conversation_id_for
from tests.support.browser import Browser, chromium
from tests.support.devhost_run import (
    FINAL,
    eventually,
    post,
    request_lines,
    run_until_final,
    workdir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HOSTILE_TEXT = (
    '<script>window.__pwned = 1</script>"><img src=x onerror="window.__pwned = 2">'
    "'><svg onload='window.__pwned = 3'> where is my order?"
)
HOSTILE = json.dumps(
    {"customerId": "evil-1", "text": HOSTILE_TEXT, "channel": "chat", "idempotencyKey": "evil-k"}
).encode()
HOSTILE_ID = conversation_id_for("evil-1", "evil-k", fallback="")
POISON = b'{"v": 1, "stage": "intent", "conversationId": "not a valid id!"}'
STAGES = {"ingest", "intent agent", "response agent", "critic agent"}


def _screenshots(tmp_path: Path) -> Path:
    return Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")


async def _parked(host: Host, message_id: str) -> list[Any]:
    broker = host.broker
    assert broker is not None

    async def probe() -> list[Any] | None:
        parked = [
            m
            for m in broker.peek("deadletter", limit=100)
            if str(m.application_properties.get("OriginalMessageId", "")).startswith(message_id)
        ]
        return parked or None

    return await eventually(probe, within_s=30, failing=f"{message_id} was not parked")


async def _spans_for(host: Host, conversation_id: str, names: set[str]) -> None:
    """Wait until the workers' spans of ``conversation_id`` have reached the dashboard."""
    dashboard = host.dashboard
    assert dashboard is not None

    async def probe() -> bool | None:
        conversation = await dashboard.index.get(conversation_id)
        trace = conversation.trace_id if conversation else None
        if trace and names <= {s.name for s in dashboard.spans.for_trace(trace)}:
            return True
        return None

    await eventually(probe, within_s=30, failing=f"the spans of {conversation_id} did not arrive")


async def test_every_page_renders_over_a_running_devhost(tmp_path: Path) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        assert host.broker is not None
        settings = post(host, [*request_lines(4), HOSTILE, b"{not json"])
        docs = await run_until_final(host, settings, 6, timeout_s=120)
        assert sum(1 for d in docs if d.get("status") in FINAL) == 6
        host.broker.send("intent", POISON, message_id="poison-e2e")
        await _parked(host, "poison-e2e")
        await _spans_for(host, HOSTILE_ID, STAGES)
        base = f"http://127.0.0.1:{host.http_port}/dashboard"
        headers = {"x-functions-key": host.function_key}
        async with aiohttp.ClientSession(headers=headers) as http:
            pages: dict[str, str] = {}
            for path in (
                "/",
                "/conversations",
                f"/conversations/{HOSTILE_ID}",
                "/deadletters",
                "/deadletters/replay",
                "/batches",
                "/rejections",
                "/escalations",
            ):
                async with http.get(base + path) as response:
                    assert response.status == 200, path
                    pages[path] = await response.text()
            for path, html in pages.items():
                assert "<script>window" not in html, path
                assert "<img src=x" not in html, path
            assert (
                "&lt;script&gt;window.__pwned = 1&lt;/script&gt;"
                in pages[f"/conversations/{HOSTILE_ID}"]
            )
            waterfall = pages[f"/conversations/{HOSTILE_ID}"]
            assert "Every span the app exported" in waterfall
            for name in STAGES:
                assert f'<span class="wf-name">{name}' in waterfall
            assert "poison-e2e" in pages["/deadletters"]
            assert "invalid_json" in pages["/rejections"]
            assert "intent agent" in pages["/"]
            assert "The teams' work queue" in pages["/escalations"]
            async with http.get(base + "/?fragment=1") as response:
                fragment = await response.text()
            assert "<html" not in fragment
            assert "outcomes" in fragment
        async with aiohttp.ClientSession() as anonymous, anonymous.get(base + "/") as response:
            assert response.status == 401


@pytest.mark.skipif(chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")
async def test_the_dashboard_in_a_browser(tmp_path: Path) -> None:
    shots = _screenshots(tmp_path)
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        assert host.broker is not None
        settings = post(host, [*request_lines(8), HOSTILE])
        docs = await run_until_final(host, settings, 9, timeout_s=120)
        assert sum(1 for d in docs if d.get("status") in FINAL) == 9
        host.broker.send("intent", POISON, message_id="poison-b1")
        await _parked(host, "poison-b1")
        answered = next(d["id"] for d in docs if d.get("status") == "answered")
        await _spans_for(host, answered, STAGES)
        await _spans_for(host, HOSTILE_ID, STAGES)
        url = dashboard_url(f"http://127.0.0.1:{host.http_port}", host.function_key)
        root = url.split("/dashboard/")[0] + "/dashboard"

        async with await Browser.start(tmp_path / "profile") as browser:
            # The flow: the key is swapped for a cookie, and the counts update in place.
            await browser.goto(url, ready="!!document.querySelector('.flow')")
            assert await browser.evaluate("location.search") == ""
            finished = (
                "['answered','escalated','failed'].map(s => Number(document.querySelector("
                "'dd.status-' + s).textContent.replace(/,/g, ''))).reduce((a, b) => a + b, 0)"
            )
            before = await browser.evaluate(finished)
            assert before == 9
            await browser.screenshot(shots / "overview.png")
            await browser.evaluate("window.__same_page = true")
            post(host, request_lines(3, prefix="more"))
            await browser.wait_for(f"window.__same_page && {finished} >= 12", timeout_s=120)

            # A conversation's waterfall shows every stage's span.
            await browser.goto(
                f"{root}/conversations/{answered}", ready="!!document.querySelector('.waterfall')"
            )
            names = await browser.evaluate(
                "[...document.querySelectorAll('.wf-name')].map(e => e.textContent)"
            )
            assert set(names) >= STAGES
            assert await browser.evaluate("document.querySelectorAll('.wf-bar').length") == len(
                names
            )
            await browser.screenshot(shots / "conversation.png")

            # Hostile customer text is shown as text and runs nothing.
            await browser.goto(
                f"{root}/conversations/{HOSTILE_ID}", ready="!!document.querySelector('pre.text')"
            )
            assert await browser.evaluate("window.__pwned === undefined")
            assert (
                await browser.evaluate(
                    "document.querySelectorAll('main img, main svg:not(.wf-track)').length"
                )
                == 0
            )
            shown = await browser.evaluate("document.querySelector('pre.text').textContent")
            assert shown == HOSTILE_TEXT
            await browser.screenshot(shots / "hostile.png")

            # A dead letter is replayed from the page, after its confirmation.
            await browser.goto(
                f"{root}/deadletters", ready="document.body.textContent.includes('poison-b1')"
            )
            await browser.screenshot(shots / "deadletters.png")
            await browser.evaluate(
                "[...document.querySelectorAll('a.button')].find(a => a.href.includes("
                "'id=poison-b1')).click()"
            )
            await browser.wait_for("document.title.startsWith('Replay')")
            await browser.evaluate("document.querySelector('form.confirm button').click()")
            await browser.wait_for("document.body.textContent.includes('Replayed 1 message')")
        replayed = await _parked(host, "poison-b1:replay")  # still poison: parked again
        assert replayed


async def test_a_newcomer_can_provoke_a_dead_letter_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from devhost import cli

    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        sent = await asyncio.to_thread(cli.main, ["--workdir", str(where.root), "send", "--poison"])
        assert sent == 0
        said = capsys.readouterr().out
        message_id = said.split("sent poison message ")[1].split()[0]
        (parked,) = await _parked(host, message_id)
        assert parked.application_properties["DeadLetterReason"] == "InvalidInput"
        assert cli.main(["--workdir", str(where.root), "dlq", "list"]) == 0
        assert message_id in capsys.readouterr().out
        assert cli.main(["--workdir", str(where.root), "dashboard", "--no-open"]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed == dashboard_url(f"http://127.0.0.1:{host.http_port}", host.function_key)


async def _model_call_spans(host: Host, conversation_id: str, stages: set[str]) -> str:
    """Wait until every stage in ``stages`` has a model-call span collected; the trace id."""
    dashboard = host.dashboard
    assert dashboard is not None

    async def probe() -> str | None:
        conversation = await dashboard.index.get(conversation_id)
        trace = conversation.trace_id if conversation else None
        if trace:
            spans = dashboard.spans.for_trace(trace)
            if stages <= {s.stage for s in spans if "gen_ai.system" in s.attributes}:
                return trace
        return None

    return await eventually(
        probe, within_s=30, failing=f"the model-call spans of {conversation_id} did not arrive"
    )


_ROW = re.compile(
    r'<div class="wf-row wf-(?P<kind>\w+)[^"]*">\s*<div class="wf-label depth-(?P<depth>\d)">'
)


async def test_the_waterfall_shows_each_stages_model_calls_beneath_it(tmp_path: Path) -> None:
    """Spans take devhost's own path: the workers' OTLP exporter, the host's receiver, the span
    store; the page then shows every stage's model calls one level beneath it."""
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        settings = post(host, request_lines(1))
        docs = await run_until_final(host, settings, 1, timeout_s=120)
        (answered,) = [d for d in docs if d.get("status") == "answered"]
        agents = {"intent", "response", "critic"}
        await _model_call_spans(host, answered["id"], agents)
        base = f"http://127.0.0.1:{host.http_port}/dashboard"
        headers = {"x-functions-key": host.function_key}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/conversations/{answered['id']}") as response:
                assert response.status == 200
                html = await response.text()
            async with http.get(f"{base}/") as response:
                flow = await response.text()
    # The flow page counts the same calls in the interactive lane of their deployments.
    lane_calls = [
        int(m[1])
        for m in re.finditer(
            r'<tr class="lane-interactive">\s*<td>[^<]*</td>\s*<td>interactive</td>\s*'
            r"<td[^>]*>[^<]*</td>\s*<td>(?:<meter[^>]*></meter>)?</td>\s*"
            r'<td class="num">([\d,]+)</td>',
            flow,
        )
    ]
    assert sum(lane_calls) >= len(agents)
    rows = [(m["kind"], int(m["depth"])) for m in _ROW.finditer(html)]
    names = re.findall(r'<span class="wf-name">([^<]*)</span>', html)
    assert len(rows) == len(names)
    for agent in agents:
        at = names.index(f"{agent} agent")
        kind, depth = rows[at]
        assert kind == "stage"
        following = rows[at + 1]
        assert following == ("llm", depth + 1), (agent, rows)
        assert names[at + 1].startswith("chat ")
    assert html.count("<b>prompt tokens</b>") >= len(agents)
    assert html.count("<b>cost $</b>") >= len(agents)
    assert html.count("<b>model calls</b>") >= len(agents)
