"""Poison messages in a running devhost: parked with a reason, listed, replayed by the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from devhost import cli
from devhost.broker import Broker
from devhost.host import Host, SimulatorOptions
from tests.support.devhost_run import eventually, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def _parked(host: Host, queue: str, count: int) -> list[object]:
    broker = host.broker
    assert broker is not None

    async def probe() -> list[object] | None:
        parked = broker.peek(queue, limit=100)
        return list(parked) if len(parked) >= count else None

    return await eventually(
        probe, within_s=30, failing=f"fewer than {count} parked messages on {queue}"
    )


async def test_a_poison_message_is_parked_listed_and_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0) as host:
        assert host.broker is not None
        body = b'{"v": 1, "stage": "intent", "conversationId": "not a valid id!"}'
        host.broker.send("intent", body, message_id="poison-1")
        (parked,) = await _parked(host, "deadletter", 1)
        assert parked.body == body  # type: ignore[attr-defined]
        props = parked.application_properties  # type: ignore[attr-defined]
        assert props["DeadLetterReason"] == "InvalidInput"
        assert props["OriginalQueue"] == "intent"

        assert cli.main(["--workdir", str(where.root), "dlq", "list"]) == 0
        listing = capsys.readouterr().out
        assert "poison-1" in listing
        assert "InvalidInput" in listing

        assert (
            cli.main(["--workdir", str(where.root), "dlq", "replay", "--queue", "deadletter"]) == 0
        )
        assert "replayed 1" in capsys.readouterr().out
        # Still poison: the replayed copy is parked again, with its reason, under its new id.
        again = await _parked(host, "deadletter", 1)
        originals = {m.application_properties["OriginalMessageId"] for m in again}  # type: ignore[attr-defined]
        assert any(str(o).startswith("poison-1:replay") for o in originals)


def test_replaying_other_ids_leaves_a_parked_message_listed_undelivered_and_replayable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path).create()
    with Broker(where.broker) as broker:
        broker.ensure_queue("intent")
        broker.ensure_queue("deadletter", max_delivery_count=10)
        broker.send(
            "deadletter",
            b"poison",
            message_id="dl-1",
            application_properties={"OriginalQueue": "intent", "OriginalMessageId": "poison-1"},
        )

    replay = ["--workdir", str(where.root), "dlq", "replay", "--queue", "deadletter"]
    for _ in range(12):  # more than the parking queue's MaxDeliveryCount
        assert cli.main([*replay, "--id", "someone-else"]) == 0
        assert "replayed 0" in capsys.readouterr().out

    assert cli.main(["--workdir", str(where.root), "dlq", "list"]) == 0
    listing = capsys.readouterr().out
    [row] = [line for line in listing.splitlines() if "poison-1" in line]
    assert "(parked)" in row
    assert row.rstrip(" │|").split()[-1] == "0"  # the deliveries column
    assert "$deadletterqueue" not in listing

    assert cli.main([*replay, "--id", "poison-1"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    with Broker(where.broker) as broker:
        assert broker.peek("deadletter") == []
        [back] = broker.peek("intent")
    assert back.body == b"poison"
    assert back.message_id.startswith("poison-1:replay:")
    assert back.delivery_count == 0
