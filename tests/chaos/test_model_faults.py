"""Model faults on a running devhost: every conversation ends in an outcome, none twice.

The real simulator is told over its admin API to fail (an outage of 503s, a share of timeouts,
a 400 for every call); the workers, the broker and the pipeline are the real ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.host import Host, SimulatorOptions
from devhost.scaler import ScaleLimits
from shared.config import Settings
from tests.support.devhost_run import FINAL, post, request_lines, run_until_final, workdir

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

LIMITS = ScaleLimits(max_instances=2, max_step_up=2, polling_interval_s=0.5, cooldown_s=30)


async def _admin(host: Host, method: str, path: str, body: Any = None) -> Any:
    assert host.simulator_url is not None
    assert host.simulator_admin_key is not None
    base = host.simulator_url.split("/openai")[0].rstrip("/")
    headers = {"x-sim-admin-key": host.simulator_admin_key}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{base}{path}", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def _stats(host: Host) -> dict[str, Any]:
    stats: dict[str, Any] = await _admin(host, "GET", "/_sim/stats")
    return stats["totals"]


def _assert_once_each(docs: list[dict[str, Any]]) -> None:
    """One record per (stage, revision), each written once (no two share a sequence number)."""
    for doc in docs:
        stages = doc.get("stages") or {}
        seqs = [r.get("seq") for r in stages.values()]
        assert len(seqs) == len(set(seqs)), doc["id"]
        assert all(key == f"{r['stage']}:{r['revision']}" for key, r in stages.items())


def _host(tmp_path: Path) -> Host:
    return Host(
        workdir(tmp_path),
        simulator=SimulatorOptions(tpm=50_000_000, latency_ms=20),
        http_port=0,
        limits=LIMITS,
    )


async def test_a_model_outage_ends_with_every_conversation_answered_or_escalated(
    tmp_path: Path,
) -> None:
    count = 30
    async with _host(tmp_path) as host:
        await _admin(host, "PUT", "/_sim/config", {"faults": {"error_rates": {"503": 1.0}}})
        settings: Settings = post(host, request_lines(count, prefix="outage"))
        # The outage lasts until every conversation has met it more than once: far past the
        # point where the old handling had burnt its ten deliveries (86 ms for an open circuit).
        for _ in range(600):
            if (await _stats(host)).get("faults_injected", 0) >= 3 * count:
                break
            await asyncio.sleep(0.1)
        assert host.broker is not None
        assert host.broker.queue_stats()[settings.queues.intent].scheduled > 0  # waiting, later
        outage_faults = (await _stats(host)).get("faults_injected", 0)
        await _admin(host, "PUT", "/_sim/config", {"faults": {"error_rates": {}}})
        docs = await run_until_final(host, settings, count, timeout_s=240)
        statuses = Counter(d["status"] for d in docs)
        assert statuses["answered"] + statuses["escalated"] == count, statuses
        assert host.broker.peek(settings.queues.deadletter, limit=10) == []
        _assert_once_each(docs)
        print(f"outage: {outage_faults} failed calls, then {dict(statuses)}")


async def test_model_timeouts_on_a_fifth_of_calls_leave_no_conversation_stuck(
    tmp_path: Path,
) -> None:
    count = 40
    async with _host(tmp_path) as host:
        faults = {"faults": {"timeout_rate": 0.2, "timeout_s": 0.2, "seed": 7}}
        await _admin(host, "PUT", "/_sim/config", faults)
        settings = post(host, request_lines(count, prefix="timeouts"))
        docs = await run_until_final(host, settings, count, timeout_s=240)
        statuses = Counter(d["status"] for d in docs)
        assert statuses["answered"] + statuses["escalated"] == count, statuses
        assert host.broker is not None
        assert host.broker.peek(settings.queues.deadletter, limit=10) == []
        _assert_once_each(docs)
        print(
            f"timeouts: {(await _stats(host)).get('faults_injected', 0)} injected, "
            f"then {dict(statuses)}"
        )


async def test_a_model_that_refuses_every_request_fails_each_conversation_once(
    tmp_path: Path,
) -> None:
    count = 20
    async with _host(tmp_path) as host:
        await _admin(host, "PUT", "/_sim/config", {"faults": {"error_rates": {"400": 1.0}}})
        settings = post(host, request_lines(count, prefix="refused"))
        docs = await run_until_final(host, settings, count, timeout_s=120)
        assert Counter(d["status"] for d in docs) == {"failed": count}
        assert all("400" in d["outcome"]["description"] for d in docs)
        # One model call per conversation, not ten deliveries' worth of them.
        assert (await _stats(host)).get("requests", 0) == count
        assert host.broker is not None
        parked = host.broker.peek(settings.queues.deadletter, limit=100)
        assert len(parked) == count
        assert all(d["status"] in FINAL for d in docs)
