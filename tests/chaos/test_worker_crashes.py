"""kill -9 worker processes during a 500-conversation run: one after each fifth of the requests
is posted, then at random moments until it is done.

Every conversation must still finish, none may be lost, and no stage may have run its side
effect twice: one record per (stage, revision), token counts that add up to the records, and
one next-message per record (duplicate detection drops the re-sends).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from devhost.host import Host, SimulatorOptions
from devhost.scaler import ScaleLimits
from shared.domain.messages import Stage
from tests.support.devhost_run import (
    FINAL,
    eventually,
    post,
    request_lines,
    run_until_final,
    workdir,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

CONVERSATIONS = int(os.environ.get("CHAOS_CONVERSATIONS", "500"))


async def test_killing_workers_at_random_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261123)
    kills: list[str] = []
    last_kill = [time.monotonic()]

    environ = {**os.environ, "DEVHOST_LOCK_DURATION_S": "4"}
    limits = ScaleLimits(max_instances=2, max_step_up=2, polling_interval_s=0.5, cooldown_s=30)
    async with Host(
        workdir(tmp_path),
        simulator=SimulatorOptions(tpm=50_000_000, latency_ms=40),
        http_port=0,
        limits=limits,
        environ=environ,
    ) as host:
        # The requests go in five parts, and a running worker is killed after each: however
        # fast the machine drains them, five kills land while there is work in flight.
        async def kill_one() -> str | None:
            victim = host.kill_random_worker(rng)
            return None if victim is None else f"{victim.function}#{victim.instance}"

        lines = request_lines(CONVERSATIONS, prefix="chaos")
        part = -(-len(lines) // 5)
        for start in range(0, len(lines), part):
            settings = post(host, lines[start : start + part])
            kills.append(await eventually(kill_one, within_s=60, failing="no worker started"))
        last_kill[0] = time.monotonic()

        def maybe_kill() -> None:
            if time.monotonic() - last_kill[0] < rng.uniform(0.7, 2.0):
                return
            victim = host.kill_random_worker(rng)
            if victim is not None:
                kills.append(f"{victim.function}#{victim.instance}")
            last_kill[0] = time.monotonic()

        docs = await run_until_final(
            host, settings, CONVERSATIONS, timeout_s=360, on_tick=maybe_kill
        )
        assert host.broker is not None
        stats = host.broker.queue_stats()

    assert len(kills) >= 5, kills
    assert len(docs) == CONVERSATIONS
    unfinished = [d["conversationId"] for d in docs if d["status"] not in FINAL]
    assert unfinished == []
    assert {d["status"] for d in docs} <= {"answered", "escalated"}
    for doc in docs:
        records = doc["stages"].values()
        assert sorted(r["seq"] for r in records) == list(range(len(records)))
        calls = sum(int(r["usage"].get("calls", 0)) for r in records)
        assert doc["tokens"]["total"]["calls"] == calls, doc["conversationId"]
    # Each stage record sent at most one next message; re-sends were dropped as duplicates.
    records_total = sum(len(d["stages"]) for d in docs)
    agent_queues = [settings.queues.for_stage(stage) for stage in Stage]
    sent = sum(stats[q].sent_total for q in agent_queues)
    finals = sum(1 for d in docs for r in d["stages"].values() if "outcome" in r["next"])
    assert sent == CONVERSATIONS + records_total - finals
    assert all(stats[q].deadlettered == 0 for q in agent_queues)
