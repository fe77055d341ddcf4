"""Queue-length scaling end to end: a burst into a real devhost (simulator, broker, worker
processes) scales the functions out within their limits and, after the cooldown, back to zero."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest

from devhost.host import Host, SimulatorOptions
from devhost.scaler import ScaleLimits
from tests.support.devhost_run import FINAL, post, request_lines, run_until_final, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CONVERSATIONS = 60
LIMITS = ScaleLimits(max_instances=3, max_step_up=2, polling_interval_s=0.5, cooldown_s=3.0)


def running(host: Host) -> int:
    return sum(len(w) for w in host.workers.values())


async def test_a_burst_scales_out_within_the_limits_and_back_to_zero_after_the_cooldown(
    tmp_path: Path,
) -> None:
    states: list[dict[str, dict[str, object]]] = []

    def look_at_state() -> None:
        if host.workdir.state.exists():
            states.append(json.loads(host.workdir.state.read_text())["functions"])

    async with Host(
        workdir(tmp_path),
        simulator=SimulatorOptions(tpm=50_000_000, latency_ms=40),
        http_port=0,
        limits=LIMITS,
    ) as host:
        settings = post(host, request_lines(CONVERSATIONS, prefix="scale"))
        docs = await run_until_final(
            host, settings, CONVERSATIONS, timeout_s=50, on_tick=look_at_state
        )
        drained_at = time.monotonic()
        while running(host) and time.monotonic() - drained_at < LIMITS.cooldown_s + 15:
            await asyncio.sleep(0.1)
        at_zero = running(host)
        history = list(host.history)
        assert host.quota is not None
        profile = host.quota.profile("intent_agent", time.time())

    assert sum(1 for d in docs if d["status"] in FINAL) == CONVERSATIONS
    assert at_zero == 0
    # Back to zero after the last backlog, not sooner than one cooldown (how much later depends
    # on the machine's load, so only the order is asserted; at_zero above says it happened).
    last_busy = max(s["t"] for s in history if any(s["backlog"].values()))
    zero = min(s["t"] for s in history if s["t"] > last_busy and not any(s["instances"].values()))
    assert zero - last_busy >= LIMITS.cooldown_s - 0.1
    # And every function stopped its last instance only after its own queue had been empty
    # for the cooldown.
    for before, after in itertools.pairwise(history):
        for function, count in after["instances"].items():
            if count == 0 and before["instances"].get(function, 0) > 0:
                busy_until = max(
                    (s["t"] for s in history if s["t"] <= after["t"] and s["backlog"][function]),
                    default=history[0]["t"] - LIMITS.cooldown_s,
                )
                assert after["t"] - busy_until >= LIMITS.cooldown_s - 0.1, function

    functions = {"ingest", "intent_agent", "response_agent", "critic_agent"}
    peaks = {f: max(s["instances"].get(f, 0) for s in history) for f in functions}
    assert all(peak >= 1 for peak in peaks.values()), peaks
    assert max(peaks.values()) > 1, "a 60-conversation burst needs more than one instance"
    for before, after in itertools.pairwise(history):
        for function, count in after["instances"].items():
            assert count <= LIMITS.max_instances
            assert count - before["instances"].get(function, 0) <= LIMITS.max_step_up
    assert history[-1]["instances"] == {f: 0 for f in history[-1]["instances"]}

    # devhost status reads the instance counts from state.json.
    busy = [s for s in states if s["intent_agent"]["instances"]]
    assert busy, "state.json never showed intent_agent running"
    assert busy[0]["intent_agent"]["source"] == settings.queues.intent

    # The quota cap was computed from calls measured in this run, not only from the prior.
    assert profile.samples >= CONVERSATIONS // 2
    assert profile.seconds >= 0.04  # at least the simulated model latency of its calls
