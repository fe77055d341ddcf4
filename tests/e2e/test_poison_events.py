"""A poison event between good ones on one partition: nothing waits, nothing is lost.

Before the request contract, such bodies made ingest raise; the whole Event Hub batch went
through the function's retry policy (about three minutes) and was then checkpointed past with
the bad event in no table. Now the batch is recorded at once and the checkpoint passes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from devhost import cli
from devhost.broker import EventSpec
from devhost.host import Host, SimulatorOptions
from shared.bootstrap import load_settings
from shared.domain.messages import event_identity
from shared.domain.request_contract import event_document_id
from tests.support.devhost_run import conversations, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

FINAL = {"answered", "escalated", "rejected", "failed"}


def _good(n: int) -> bytes:
    return json.dumps(
        {
            "customerId": "cust-poison",
            "text": f"Where is my order ORD-{n}? It has not moved.",
            "channel": "chat",
            "metadata": {"device": {"os": "iOS", "app": "5.2"}, "previousTicketIds": ["T-1"]},
        }
    ).encode()


POISONS = [
    b'{"customerId": "cust-poison", "text": "NaN here", "channel": "chat", "score": NaN}',
    b'{"customerId": "cust-poison", "text": "\\ud800", "channel": "chat"}',
    b'{"customerId": "cust-poison", "text": "hi", "channel": "chat", "metadata": '
    + b'{"a":' * 5000
    + b"1"
    + b"}" * 5001,
    b'{"customerId": "cust-poison", "text": "x", "channel": "chat", "n": 1' + b"0" * 5000 + b"}",
]


async def _until(predicate: object, *, attempts: int = 600) -> None:
    for _ in range(attempts):
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("poison", POISONS, ids=["nan", "surrogate", "deep", "huge-number"])
async def test_a_poison_event_between_two_good_ones_stalls_nothing(
    tmp_path: Path, poison: bytes
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        hub, group = settings.eventhub_name, settings.eventhub_consumer_group
        bodies = [_good(1), poison, _good(2)]
        sent = time.monotonic()
        positions = host.broker.publish_batch(
            hub, [EventSpec(body=b, partition_key="cust-poison") for b in bodies]
        )
        assert len({p.partition_id for p in positions}) == 1  # one partition, in this order
        ids = [
            event_document_id(b, event_identity(p.partition_id, p.sequence_number, p.offset))
            for b, p in zip(bodies, positions, strict=True)
        ]

        async def all_final() -> bool:
            docs = {d["id"]: d for d in await conversations(host, settings)}
            return all(docs.get(i, {}).get("status") in FINAL for i in ids)

        await _until(all_final)
        took = time.monotonic() - sent
        docs = {d["id"]: d for d in await conversations(host, settings)}
        assert [docs[i]["status"] for i in ids][1] == "rejected"
        assert {docs[ids[0]]["status"], docs[ids[2]]["status"]} <= {"answered", "escalated"}
        assert docs[ids[1]]["reasonCode"] in {
            "invalid_json",
            "invalid_unicode",
            "too_deep",
            "number_out_of_range",
        }
        stats = host.broker.hub_stats(hub, group)[positions[0].partition_id]
        assert stats.checkpoint >= positions[-1].sequence_number  # the checkpoint passed all 3
        print(f"poison {poison[:20]!r}: all three final after {took:.2f}s")


async def test_a_batch_mixing_good_and_bad_rows_answers_the_good_and_records_the_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        settings = load_settings(host.settings_env)
        rows = [
            _good(1),
            POISONS[0],
            b"{broken",
            _good(2),
            json.dumps({"customerId": "c-1", "text": "\u200b\u200b", "channel": "chat"}).encode(),
        ]
        inbox = host.workdir.inbox / settings.batch_container
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / "mixed.part").write_bytes(b"\n".join(rows) + b"\n")
        (inbox / "mixed.part").rename(inbox / "mixed.jsonl")

        async def settled() -> bool:
            docs = await conversations(host, settings)
            return sum(1 for d in docs if d.get("status") in FINAL) >= len(rows)

        await _until(settled)
        docs = await conversations(host, settings)
        rejected = sorted(
            (d["source"]["line"], d["reasonCode"]) for d in docs if d["status"] == "rejected"
        )
        assert rejected == [(2, "invalid_json"), (3, "invalid_json"), (5, "empty_text")]
        good = [d for d in docs if d["status"] != "rejected"]
        assert len(good) == 2
        assert all(d["status"] in {"answered", "escalated"} for d in good)
        assert all(d["request"]["metadata"]["device"]["os"] == "iOS" for d in good)

        # The CLI runs its own event loop, as it does from a shell.
        assert await asyncio.to_thread(cli.main, ["--workdir", str(where.root), "batches"]) == 0
        listing = capsys.readouterr().out
        assert "mixed.jsonl" in listing
        assert "invalid_json 2" in listing
        listing_args = ["--workdir", str(where.root), "rejections", "--code", "empty_text"]
        assert await asyncio.to_thread(cli.main, listing_args) == 0
        listing = capsys.readouterr().out
        assert "empty_text" in listing
        assert "mixed.jsonl line 5" in listing
