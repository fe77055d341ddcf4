"""The loop closed on devhost, over its HTTP API on loopback: requests in by POST, one outcome
message per outcome on the outcomes topic, an escalation claimed and resolved by a person with
one delivered reply, and a second turn that carries the first in its prompts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.cli import DATA
from devhost.host import Host, SimulatorOptions
from devhost.outcomes import EVERYTHING, OutcomesTopic, decode, outcome_messages
from tests.support.devhost_run import FINAL, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

COUNT = 16


async def _until(http: aiohttp.ClientSession, cid: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    view: Any = None
    while time.monotonic() < deadline:
        async with http.get(f"/api/conversations/{cid}") as response:
            if response.status == 200:
                view = await response.json()
                if check(view):
                    return view
        await asyncio.sleep(0.3)
    raise AssertionError(f"{cid} did not get there: {view and view.get('status')}")


async def test_requests_outcomes_a_person_and_a_second_turn(tmp_path: Path) -> None:
    lines = (DATA / "demo_requests.jsonl").read_bytes().splitlines()[:COUNT]
    async with Host(
        workdir(tmp_path), simulator=SimulatorOptions(tpm=2_000_000), http_port=0
    ) as host:
        assert host.broker is not None
        base = f"http://127.0.0.1:{host.http_port}"
        headers = {"x-functions-key": host.function_key}
        async with aiohttp.ClientSession(base_url=base, headers=headers) as http:
            cids = []
            for line in lines:
                async with http.post("/api/requests", data=line) as accepted:
                    assert accepted.status == 202
                    cids.append((await accepted.json())["conversationId"])
                    assert accepted.headers["Location"] == f"/api/conversations/{cids[-1]}"
            views = [await _until(http, c, lambda v: v["status"] in FINAL, 120) for c in cids]
            topic = OutcomesTopic.from_files()
            messages = [decode(m) for m in outcome_messages(host.broker, topic, EVERYTHING)]
            by_conversation = {m["conversationId"]: m for m in messages}
            assert len(messages) == len(by_conversation) == COUNT  # one message per outcome
            for view in views:
                kind = by_conversation[view["id"]]["kind"]
                assert kind == {"answered": "reply", "escalated": "handover"}[view["status"]]

            # A person resolves one escalation; its reply is delivered once, on its channel.
            async with http.get("/api/escalations") as listed:
                item = (await listed.json())["items"][0]
            path = f"/api/escalations/{item['id']}"
            async with http.post(f"{path}/claim", json={"agent": "sam"}) as claimed:
                assert claimed.status == 200
            async with http.post(f"{path}/claim", json={"agent": "kim"}) as refused:
                assert refused.status == 409
            reply = {"agent": "sam", "reply": "I have fixed this for you myself."}
            for _ in range(2):  # a retried resolve is not a second reply
                async with http.post(f"{path}/resolve", json=reply) as resolved:
                    assert resolved.status == 200
            delivery = topic.delivery_subscription(item["channel"])
            assert delivery is not None
            mine = [
                decode(m)
                for m in outcome_messages(host.broker, topic, delivery)
                if m.correlation_id == item["conversationId"]
            ]
            assert [(m["kind"], m.get("author")) for m in mine] == [
                ("handover", "agents"),
                ("reply", "human:sam"),
            ]
            done = await _until(http, item["conversationId"], lambda v: True, 5)
            assert done["status"] == "resolved_by_human"

            # A second turn of an answered conversation runs with the first in view.
            first = next(v for v in views if v["status"] == "answered")
            request = json.loads(lines[cids.index(first["id"])])
            follow = {**request, "text": "Thanks. And when exactly?", "conversationId": first["id"]}
            follow.pop("idempotencyKey", None)
            async with http.post("/api/requests", json=follow) as again:
                assert again.status == 202
            second = await _until(
                http, first["id"], lambda v: v.get("turn") == 1 and v["status"] in FINAL, 120
            )
    stages = {s["key"]: s for s in second["stages"]}
    assert "t1:intent:0" in stages
    assert second["turns"][0]["reply"] == first["outcome"]["reply"]
    # The first turn's message and reply ride along in the second turn's prompt.
    grown = (
        stages["t1:intent:0"]["usage"]["promptTokens"] - stages["intent:0"]["usage"]["promptTokens"]
    )
    assert grown > 20
