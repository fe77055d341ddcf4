"""The demo set through devhost: simulator over HTTP, broker, worker processes, the HTTP API."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import aiohttp
import pytest

from devhost.cli import DATA
from devhost.host import Host, SimulatorOptions
from tests.support.devhost_run import (
    STAGE_ORDER_AFTER,
    post,
    run_until_final,
    workdir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_every_demo_conversation_is_answered_or_escalated_in_stage_order(
    tmp_path: Path,
) -> None:
    lines = (DATA / "demo_requests.jsonl").read_bytes().splitlines()
    async with Host(
        workdir(tmp_path), simulator=SimulatorOptions(tpm=2_000_000), http_port=0
    ) as host:
        settings = post(host, lines)
        inbox = host.workdir.inbox / settings.batch_container
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "demo_batch.csv", inbox / "demo_batch.part")
        (inbox / "demo_batch.part").rename(inbox / "demo_batch.csv")
        records = await run_until_final(host, settings, len(lines) + 8, timeout_s=180)
        # The batch's two bad rows are records too: rejections naming the file and line.
        rejected = [d for d in records if d["status"] == "rejected"]
        docs = [d for d in records if d["status"] != "rejected"]

        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{host.http_port}/api"
            async with http.get(f"{base}/health") as health:
                assert health.status == 200
            sample = docs[0]["conversationId"]
            async with http.get(f"{base}/conversations/{sample}") as keyless:
                assert keyless.status == 401  # a FUNCTION route: the workdir's key is required
            key = {"x-functions-key": host.function_key}
            async with http.get(f"{base}/conversations/{sample}", headers=key) as one:
                assert one.status == 200
                assert (await one.json())["conversationId"] == sample
            batch_id = next(d["batchId"] for d in docs if d.get("batchId"))
            async with http.get(f"{base}/batches/{batch_id}?code={host.function_key}") as batch:
                view = await batch.json()
    assert len(docs) == len(lines) + 6
    assert sorted(d["source"]["blob"] for d in rejected) == ["batches/demo_batch.csv"] * 2
    assert {d["status"] for d in docs} <= {"answered", "escalated"}
    assert (view["accepted"], view["rejected"]) == (6, 2)
    for doc in docs:
        records = sorted(doc["stages"].values(), key=lambda r: r["seq"])
        assert records[0]["key"] == "intent:0"
        for before, after in itertools.pairwise(records):
            assert after["stage"] in STAGE_ORDER_AFTER[before["stage"]], doc["conversationId"]
            assert after["startedAt"] >= before["completedAt"]
        trace_ids = {r["traceId"] for r in records}
        assert trace_ids == {doc["traceId"]}, doc["conversationId"]
    answered = [d for d in docs if d["status"] == "answered"]
    assert answered, "the simulator approves most drafts"
    assert all(d["outcome"]["reply"] for d in answered)
    assert all(d["tokens"]["total"]["calls"] >= 3 for d in answered)
