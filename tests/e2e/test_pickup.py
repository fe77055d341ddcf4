"""Pick-up from idle on a real devhost: the first message for a function without instances
wakes the scaler through the broker's doorbell, the instance is forked from the worker
template, and always-ready instances run before any message and outlive the cooldown."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devhost.host import SCALE_FILE, Host, SimulatorOptions
from devhost.scaler import ScaleLimits
from devhost.worker import HOP_LOG_ENV
from tests.support.devhost_run import FINAL, post, request_lines, run_until_final, workdir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks workers"),
]

NEVER_S = 3600.0
"""A polling interval no test outlives: only a doorbell can make the scaler step again."""


def hop_records(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in directory.glob("*.jsonl")
    }


async def test_the_first_message_after_idle_is_taken_by_an_instance_the_doorbell_forked(
    tmp_path: Path,
) -> None:
    hops = tmp_path / "hops"
    limits = ScaleLimits(max_instances=2, polling_interval_s=NEVER_S, cooldown_s=NEVER_S)
    async with Host(
        workdir(tmp_path),
        simulator=SimulatorOptions(latency_ms=20),
        http_port=0,
        limits=limits,
        environ={**os.environ, HOP_LOG_ENV: str(hops)},
    ) as host:
        while not host.history:  # the scaler's first step, with nothing queued
            await asyncio.sleep(0.05)
        assert not any(host.workers.values())
        settings = post(host, request_lines(1, prefix="pickup"))
        docs = await run_until_final(host, settings, 1, timeout_s=90)
        started = {f for f, workers in host.workers.items() if workers}
        forked = all(w.forked for workers in host.workers.values() for w in workers)
        assert host.template is not None
        forks = host.template.forks

    assert [d["status"] in FINAL for d in docs] == [True]
    # Every stage the conversation passed through got an instance after the first step,
    # and the only thing that could make the scaler step again was a doorbell.
    assert {"ingest", "intent_agent"} <= started
    assert forked
    assert forks == len(started)
    records = hop_records(hops)
    startups = [r for rows in records.values() for r in rows if r["kind"] == "startup"]
    assert len(startups) == len(started)
    assert all(r["forked"] for r in startups)
    # The first messages were invoked by the instances started for them.
    invoked_by = set()
    for name, rows in records.items():
        startup = next(r for r in rows if r["kind"] == "startup")
        work = [r for r in rows if r["kind"] in ("message", "events")]
        assert all(r["invoked"] >= startup["ready"] for r in work)
        if work:
            invoked_by.add(name.rsplit("-", 2)[0])
    assert {"ingest", "intent_agent"} <= invoked_by


async def test_always_ready_instances_run_before_any_message_and_outlive_the_cooldown(
    tmp_path: Path,
) -> None:
    limits = replace(
        ScaleLimits.from_file(SCALE_FILE),
        polling_interval_s=0.2,
        cooldown_s=0.5,
        always_ready=(("function:critic_agent", 1),),
    )
    async with Host(
        workdir(tmp_path), simulator=SimulatorOptions(latency_ms=20), http_port=0, limits=limits
    ) as host:
        while not host.history:
            await asyncio.sleep(0.05)
        before = {f: len(w) for f, w in host.workers.items()}
        settings = post(host, request_lines(2, prefix="ready"))
        docs = await run_until_final(host, settings, 2, timeout_s=90)
        busy = len(host.history)
        # Past the cooldown every other function is back to zero; critic keeps its instance.
        while len(host.history) < busy + 50 and any(
            w for f, w in host.workers.items() if f != "critic_agent"
        ):
            await asyncio.sleep(0.1)
        after = {f: len(w) for f, w in host.workers.items()}
        state = json.loads(host.workdir.state.read_text())["functions"]

    assert before["critic_agent"] == 1
    assert sum(before.values()) == 1
    assert sum(1 for d in docs if d["status"] in FINAL) == 2
    assert after["critic_agent"] == 1
    assert sum(after.values()) == 1
    assert state["critic_agent"]["alwaysReady"] == 1
    assert state["critic_agent"]["bound"] == "alwaysReady"
