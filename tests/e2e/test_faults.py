"""``--faults`` on a running devhost: the simulator injects them, and what the app does about
them shows through ``status --json``, ``dlq list --json`` and the collected spans.

Rates of 1 make every call fail the same way, so the outcome does not depend on the draws:
a 400 is the app's own bad request (permanent: the conversation fails and its message is
parked as a dead letter), a 500 is retried and then the message is re-sent for later."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from devhost import cli
from devhost.environment import Workdir
from devhost.faults import parse_faults
from devhost.host import Host, SimulatorOptions
from tests.support.devhost_run import conversations, post, request_lines, run_until_final, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _options(spec: str) -> SimulatorOptions:
    # The same translation `devhost run --faults SPEC` makes.
    return SimulatorOptions(tpm=1_000_000, extra_args=parse_faults(spec).simulator_args())


async def _json(capsys: pytest.CaptureFixture[str], where: Workdir, *args: str) -> Any:
    code = await asyncio.to_thread(cli.main, ["--workdir", str(where.root), *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


async def test_a_refused_request_fails_the_conversation_and_parks_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=_options("400=1,seed=3"), http_port=0) as host:
        settings = post(host, request_lines(2))
        docs = await run_until_final(host, settings, 2, timeout_s=60)
        assert [d["status"] for d in docs] == ["failed", "failed"]
        status = await _json(capsys, where, "status")
        dead = await _json(capsys, where, "dlq", "list")
        code = await asyncio.to_thread(cli.main, ["--workdir", str(where.root), "status"])
        table = capsys.readouterr().out
    assert code == 0
    assert "2 requests, 0 answered, 0 429s, 2 faults injected (400 x2)" in table

    assert status["deadLetters"] == 2
    (model,) = [m for m in status["models"] if m["requests"]]
    assert model["faults"] == {"400": model["requests"]}  # every call, and not retried
    assert model["faultsInjected"] == model["requests"] == 2
    assert model["succeeded"] == 0
    parked = dead["deadLetters"]
    assert {p["messageId"].split(":")[0] for p in parked} == {d["id"] for d in docs}
    assert all(p["parked"] for p in parked)
    assert all("HTTP 400" in p["description"] for p in parked)


async def test_server_errors_are_retried_then_the_message_is_re_sent_for_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=_options("500=1"), http_port=0) as host:
        assert host.dashboard is not None
        settings = post(host, request_lines(1))
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = await _json(capsys, where, "status")
            intent = next((e for e in status["entities"] if e["name"] == "intent"), None)
            if intent is not None and intent["scheduled"] >= 1:
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError(f"the intent message was never re-sent for later: {status}")
        (doc,) = await conversations(host, settings)
        calls = await _model_calls(host, doc["traceId"])

    assert doc["status"] in ("received", "in_progress")
    (model,) = [m for m in status["models"] if m["requests"]]
    assert model["faults"].get("500", 0) >= 2  # the first attempt and at least one retry
    assert model["succeeded"] == 0
    assert {c["http.response.status_code"] for c in calls} == {500}
    assert max(c["switchboard.llm.attempt"] for c in calls) >= 2


async def _model_calls(host: Host, trace_id: str) -> list[dict[str, Any]]:
    """The model-call spans of the trace, once at least two attempts have arrived."""
    assert host.dashboard is not None
    found: list[dict[str, Any]] = []
    for _ in range(100):
        spans = host.dashboard.spans.for_trace(trace_id)
        found = [s.attributes for s in spans if "gen_ai.system" in s.attributes]
        if len(found) >= 2:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"model-call spans did not arrive: {found}")
