"""``--json`` on every read command of devhost, over a running devhost: stdout parses as one JSON
object whose keys are the documented ones, and its values agree with the store and the broker."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from devhost import cli, readouts
from devhost.environment import Workdir
from devhost.host import Host, SimulatorOptions
from tests.support.devhost_run import post, run_until_final, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DATA = Path(cli.__file__).parent / "data"
COUNT = 12


async def _json(
    capsys: pytest.CaptureFixture[str], where: Workdir, *args: str, code: int = 0
) -> dict[str, Any]:
    returned = await asyncio.to_thread(cli.main, ["--workdir", str(where.root), *args, "--json"])
    out = capsys.readouterr().out
    assert returned == code, out
    document = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(document, dict)
    return document


def _rows_have(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    assert rows
    assert all(tuple(row) == keys for row in rows), rows[0]


async def test_every_read_command_prints_its_documented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    lines = (DATA / "demo_requests.jsonl").read_bytes().splitlines()[:COUNT]
    async with Host(where, simulator=SimulatorOptions(tpm=2_000_000), http_port=0) as host:
        assert host.broker is not None
        settings = post(host, [*lines, b"{not json"])
        inbox = host.workdir.inbox / settings.batch_container
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "demo_batch.csv", inbox / "demo_batch.part")
        (inbox / "demo_batch.part").rename(inbox / "demo_batch.csv")
        docs = await run_until_final(host, settings, COUNT + 1 + 8, timeout_s=180)
        host.broker.send("intent", b'{"v": 1, "stage": "intent"}', message_id="poison-json")
        await _parked(capsys, where)

        status = await _json(capsys, where, "status")
        assert tuple(status) == readouts.STATUS_KEYS
        _rows_have(status["entities"], readouts.ENTITY_KEYS)
        assert status["running"] is True
        assert status["deadLetters"] >= 1
        intent = next(e for e in status["entities"] if e["name"] == "intent")
        assert intent["kind"] == "queue"
        assert intent["function"] == "intent_agent"
        assert isinstance(intent["instances"], int)

        checkup = await _json(capsys, where, "doctor")
        assert tuple(checkup) == readouts.DOCTOR_KEYS
        _rows_have(checkup["files"], readouts.FILE_KEYS)
        states = {Path(f["path"]).name: f["state"] for f in checkup["files"]}
        assert states["broker.sqlite3"] == states["store.sqlite3"] == "ok"
        assert "damaged" not in states.values()
        assert (checkup["running"], checkup["problems"]) == (True, 0)

        board = await _json(capsys, where, "dashboard", "--no-open")
        assert board["url"].startswith(f"http://127.0.0.1:{host.http_port}/dashboard/")

        listed = await _json(capsys, where, "conversations", "--limit", "100")
        _rows_have(listed["conversations"], readouts.CONVERSATION_KEYS)
        by_id = {d["id"]: d for d in docs}
        for row in listed["conversations"]:
            stored = by_id[row["id"]]
            assert row["status"] == stored["status"]
            assert row["customerId"] == stored["customerId"]
        answered = await _json(capsys, where, "conversations", "--status", "answered")
        assert {r["status"] for r in answered["conversations"]} == {"answered"}

        refused = await _json(capsys, where, "rejections")
        _rows_have(refused["rejections"], readouts.REJECTION_KEYS)
        assert "invalid_json" in {r["code"] for r in refused["rejections"]}

        batches = await _json(capsys, where, "batches")
        _rows_have(batches["batches"], readouts.BATCH_KEYS)
        (batch,) = batches["batches"]
        assert (batch["accepted"], batch["rejected"]) == (6, 2)

        one = listed["conversations"][0]["id"]
        shown = await _json(capsys, where, "show", one)
        assert (shown["id"], shown["status"]) == (one, by_id[one]["status"])
        assert shown["stages"]
        assert not any(k.startswith("_") for k in shown)

        dead = await _json(capsys, where, "dlq", "list")
        _rows_have(dead["deadLetters"], readouts.DEAD_LETTER_KEYS)
        parked = [r for r in dead["deadLetters"] if r["messageId"].startswith("poison-json")]
        assert parked
        assert parked[0]["parked"] is True
        assert parked[0]["originalQueue"] == "intent"

        work = await _json(capsys, where, "escalations", "list")
        assert tuple(work) == ("workItems", "total")
        escalated = [d for d in docs if d["status"] == "escalated"]
        assert work["total"] == len(escalated)
        _rows_have(work["workItems"], readouts.WORK_ITEM_KEYS)
        item = work["workItems"][0]
        assert item["conversationId"] in {d["id"] for d in escalated}
        detail = await _json(capsys, where, "escalations", "show", item["id"])
        assert detail["workItem"]["id"] == item["id"]
        assert isinstance(detail["audit"], list)

        outbox = await _json(capsys, where, "outbox", "--limit", "100")
        _rows_have(outbox["messages"], readouts.OUTBOX_KEYS)
        final = {d["id"] for d in docs if d["status"] in ("answered", "escalated")}
        assert {m["correlationId"] for m in outbox["messages"]} >= final

    # A failure says why on stderr and leaves stdout empty: nothing half-parsable.
    code = await asyncio.to_thread(
        cli.main, ["--workdir", str(where.root), "show", "c-nope", "--json"]
    )
    said = capsys.readouterr()
    assert code == 1
    assert said.out == ""
    assert "no record 'c-nope'" in said.err


async def _parked(capsys: pytest.CaptureFixture[str], where: Workdir) -> None:
    for _ in range(150):
        dead = await _json(capsys, where, "dlq", "list")
        if any(r["messageId"].startswith("poison-json") for r in dead["deadLetters"]):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the poison message was not parked")
