"""Quota per lane on the flow page, from model-call spans the app's own tracing made and sent
through the OTLP encoding devhost receives; the accounting the limiter learned beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devhost.dashboard import ROOT, Dashboard
from devhost.dashboard.lanes import lane_quotas
from devhost.dashboard.spans import SpanStore
from devhost.environment import Workdir
from shared.llm.lanes import MIN_BATCH_SHARE
from shared.telemetry import LLMTelemetry, configure_telemetry, llm_span, shutdown_telemetry
from tests.conftest import make_settings
from tests.unit.test_dashboard import KEY, OtlpRoundTrip

HOSTILE_DEPLOYMENT = "<img src=x onerror=alert(1)>"


def _call(deployment: str, lane: str, *, status: int, tokens: int = 0, wait: float = 0.0) -> None:
    with llm_span(deployment=deployment, stage="intent") as span:
        span.attempt(1, quota_wait_s=wait, lane=lane)
        if status == 200:
            span.answered("ok", status=200, retry_after_s=None)
            span.record(tokens - tokens // 4, tokens // 4)
        else:
            span.answered("throttled" if status == 429 else "server_error", status=status,
                          retry_after_s=None)  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], SpanStore]]:
    workdir = Workdir(tmp_path).create()
    settings = make_settings(tmp_path, LLM_DEPLOYMENT_TPM="mini=100000")
    spans = SpanStore(tmp_path / "spans.sqlite3")
    configure_telemetry(settings, span_exporter=OtlpRoundTrip(spans))
    dashboard = Dashboard(workdir, key=KEY, settings=settings)
    root = web.Application()
    root.add_subapp(ROOT, dashboard.app)
    async with TestClient(TestServer(root, host="127.0.0.1")) as test_client:
        yield test_client, spans
    await dashboard.close()
    shutdown_telemetry()
    spans.close()


def _lanes() -> None:
    _call("mini", "interactive", status=200, tokens=1000, wait=0.0)
    _call("mini", "interactive", status=429)
    _call("mini", "batch", status=200, tokens=400, wait=1.0)
    _call("mini", "batch", status=200, tokens=200, wait=3.0)
    _call("mini", "batch", status=503)
    _call(HOSTILE_DEPLOYMENT, "batch", status=200, tokens=10)


async def test_each_lane_shows_its_tokens_429s_failures_and_waits(
    client: tuple[TestClient[Any, Any], SpanStore],
) -> None:
    _, spans = client
    _lanes()

    found = lane_quotas(spans.model_calls(window_s=60.0), {"mini": 100_000}, window_s=60.0)

    interactive, batch = found["mini"]
    assert (interactive.lane, batch.lane) == ("interactive", "batch")
    assert interactive.used_tpm == 1000
    assert (interactive.calls, interactive.throttled, interactive.failed) == (2, 1, 0)
    assert batch.used_tpm == 600
    assert (batch.calls, batch.throttled, batch.failed) == (3, 0, 1)
    assert batch.mean_wait_s == pytest.approx(4.0 / 3)
    assert batch.max_wait_s == 3.0
    assert batch.limit_tpm == int(100_000 * MIN_BATCH_SHARE)
    assert interactive.limit_tpm == int(100_000 * (1 - MIN_BATCH_SHARE))
    assert found[HOSTILE_DEPLOYMENT][1].limit_tpm is None  # no known limit: none invented


async def test_the_flow_page_shows_the_lanes_and_the_learned_accounting_escaped(
    client: tuple[TestClient[Any, Any], SpanStore],
) -> None:
    http, _ = client
    _lanes()
    LLMTelemetry().accounting(
        deployment="mini", model="prompt+max/10s", window_s=10.0, observations=7
    )

    response = await http.get(ROOT + "/", headers={"x-functions-key": KEY})
    html = await response.text()

    assert response.status == 200
    assert "Quota per lane" in html
    assert '<tr class="lane-batch">\n  <td>mini</td>' in html
    assert "600 / 20,000" in html  # batch: used of its floor
    assert "1,000 / 80,000" in html  # interactive: used of what it can count on
    assert '<td class="inferred">prompt+max/10s (after 7 answers)</td>' in html
    assert HOSTILE_DEPLOYMENT not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
