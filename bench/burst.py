"""Burst benchmark: 1,000 conversations at once into a real devhost, then idle until every
function is back to zero instances.

    .venv/bin/python -m bench.burst                   # 1,000 conversations, then the quota phase
    .venv/bin/python -m bench.burst --quick           # 200 conversations, a smoke run
    .venv/bin/python -m bench.burst --no-quota-phase  # the backlog-bound burst only

Phase "backlog": the simulator answers every call in a fixed latency with a quota far above what
the box can use, so the backlog is the only bound: every function should scale out to its
maximum, drain, and return to zero one cooldown after its queue empties.

Phase "quota": the same burst (smaller) against a tight TPM, so the quota is the bound; the
scaler's quota cap (``devhost/scaler.py``) should keep the agents below their backlog-driven
count, and the figures show what the cap was computed from. Phase "quota-uncapped" repeats it
with the cap off (``Host(quota_aware=False)``): if the cap is right, the drain takes about as
long with fewer worker-seconds (instances x time).

Both phases sample backlog and instances per function from ``Host.history`` (one sample per
polling interval) and write a chart to ``bench/out/``. The three figures printed per phase:

* time to scale out: burst posted -> the total instance count first reaches its peak;
* time to drain: burst posted -> every conversation final and every queue and the hub empty;
* time back to zero: burst posted -> no function has an instance running.

The cooldown is shortened (``--cooldown``, default 10 s) so the run stays within minutes; the
limits used are printed. Nothing is asserted: ``tests/e2e/test_scaling.py`` does that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.burst_chart import chart
from bench.burst_phase import PhaseResult, PhaseSpec
from devhost.appmodel import SERVICE_BUS
from devhost.cli import publish_requests
from devhost.environment import Workdir, open_store
from devhost.host import SCALE_FILE, Host, SimulatorOptions
from devhost.scaler import ScaleLimits
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.domain.conversation import FINAL_STATUSES

OUT = Path(__file__).parent / "out"
POLL_S = 0.25
USAGE_EVERY_S = 5.0

TEXTS = (
    "Where is my order ORD-{n}? The tracking page has not changed for a week.",
    "I would like a refund for order ORD-{n}; the blender arrived with a cracked jug.",
    "Please cancel my subscription before the next renewal, account {n}.",
    "My card was charged twice for order ORD-{n}, can you reverse one of them?",
    "The app logs me out every time I open the basket, order ORD-{n} is stuck in it.",
    "Can I change the delivery address for ORD-{n} to my office instead?",
    "The discount code from your email did not apply to order ORD-{n}.",
)


def request_lines(count: int, *, prefix: str) -> list[bytes]:
    """Distinct requests (no two prompts alike, so the response cache cannot help)."""
    return [
        json.dumps(
            {
                "customerId": f"{prefix}-cust-{i % 211}",
                "text": TEXTS[i % len(TEXTS)].format(n=100_000 + i),
                "channel": ("chat", "email", "web")[i % 3],
                "idempotencyKey": f"{prefix}-{i}",
            }
        ).encode()
        for i in range(count)
    ]


def outstanding(host: Host, settings: Settings) -> int:
    """Messages anywhere in the pipeline: waiting, scheduled or locked, plus hub events."""
    assert host.broker is not None
    assert host.model is not None
    agent_queues = {spec.source for spec in host.model.of_type(SERVICE_BUS)}
    stats = host.broker.queue_stats()
    queued = sum(
        q.active + q.scheduled + q.locked for name, q in stats.items() if name in agent_queues
    )
    hub = host.broker.hub_stats(settings.eventhub_name, settings.eventhub_consumer_group)
    return queued + sum(p.backlog for p in hub.values())


async def count_statuses(host: Host, settings: Settings) -> Counter[str]:
    store = open_store(host.workdir, settings)
    counts: Counter[str] = Counter()
    try:
        for status in ("received", "in_progress", *sorted(FINAL_STATUSES)):
            docs = await store.query_eq(
                settings.conversations_container, "status", status, limit=10_000
            )
            counts[status] = len(docs)
    finally:
        await store.close()
    return counts


async def simulator_stats(host: Host) -> dict[str, dict[str, Any]]:
    """The simulator's counters per deployment (``GET /_sim/stats``)."""
    assert host.simulator_url is not None
    async with (
        aiohttp.ClientSession(
            headers={"x-sim-admin-key": host.simulator_admin_key or ""}
        ) as session,
        session.get(f"{host.simulator_url}/_sim/stats") as answer,
    ):
        answer.raise_for_status()
        stats: dict[str, dict[str, Any]] = (await answer.json())["deployments"]
        return stats


def _usage(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The counters quota use is computed from, per deployment."""
    keys = ("charged_tokens", "rate_limited", "requests")
    return {name: {k: int(c.get(k, 0)) for k in keys} for name, c in stats.items()}


async def run_phase(spec: PhaseSpec, root: Path) -> PhaseResult:
    """Post the burst into a fresh devhost and watch it until every function is at zero."""
    options = SimulatorOptions(latency_ms=spec.latency_ms, tpm=spec.tpm)
    async with Host(
        Workdir(root / spec.name),
        simulator=options,
        http_port=0,
        limits=spec.limits,
        quota_aware=spec.quota_aware,
    ) as host:
        settings = load_settings(host.settings_env)
        while not host.history:  # the first scaler step: the baseline sample, all at zero
            await asyncio.sleep(0.05)
        lines = request_lines(spec.conversations, prefix=spec.name)
        before = _usage(await simulator_stats(host))
        burst_at = time.time()
        assert host.broker is not None
        publish_requests(host.broker, settings, lines, progress=False)
        result = PhaseResult(spec, list(host.history), burst_at)
        result.usage.append((0.0, before))
        deadline = time.monotonic() + spec.timeout_s
        next_usage = time.monotonic() + USAGE_EVERY_S
        while time.monotonic() < deadline:
            now = time.time() - burst_at
            if result.drained_s is None and time.monotonic() >= next_usage:
                next_usage += USAGE_EVERY_S
                result.usage.append((now, _usage(await simulator_stats(host))))
            if result.drained_s is None and outstanding(host, settings) == 0:
                # Drained when the broker saw it; the store query that confirms it takes a while.
                after = _usage(await simulator_stats(host))
                result.statuses = await count_statuses(host, settings)
                if result.finished >= spec.conversations:
                    result.drained_s = now
                    result.usage.append((now, after))
            running = sum(len(w) for w in host.workers.values())
            if result.drained_s is not None and running == 0:
                result.zero_s = now
                break
            await asyncio.sleep(POLL_S)
        if host.quota is not None:
            for name in host.quota.bindings:
                profile = host.quota.profile(name, time.time())
                result.profiles[name] = {
                    "seconds": profile.seconds,
                    "tokens": profile.tokens,
                    "samples": profile.samples,
                }
        if not result.statuses:
            result.statuses = await count_statuses(host, settings)
        result.history = list(host.history)
    return result


# --------------------------------------------------------------------------- report


def _use(result: PhaseResult, deployment: str) -> str:
    use, middle = result.quota_use(deployment), result.quota_use(deployment, middle=0.8)
    throttled, share = result.throttled_share(deployment)
    if use is None or middle is None:
        return f"{deployment} -"
    shown = "-" if share is None else f"{share:.1%}"
    # Three places: the bar is 0.9, and 0.895 would print as 0.90 with two.
    return f"{deployment} {use:.3f}; {middle:.3f}; {throttled}, {shown}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def report(result: PhaseResult, path: Path) -> list[str]:
    spec = result.spec
    landed, landed_peak, scaled = result.scaled_out_s()
    total, all_peaked = result.all_at_peak_s()
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items()) if v)
    after_drain = (
        f"{result.zero_s - result.drained_s:.1f} s after the drain"
        if result.zero_s is not None and result.drained_s is not None
        else "not reached"
    )
    lines = [
        f"== phase {spec.name}: {spec.conversations} conversations, {spec.latency_ms:g} ms per "
        f"model call, {spec.tpm:,} TPM per deployment",
        f"   time to scale out   {_s(scaled)}  ({landed}, where the burst lands, at "
        f"{landed_peak} instances; every function at its peak by {_s(all_peaked)}; "
        f"{total} instances at most in all)",
        f"   time to drain       {_s(result.drained_s)}  ({result.finished}/{spec.conversations}"
        f" final: {statuses})",
        f"   time back to zero   {_s(result.zero_s)}  ({after_drain})",
        f"   worker-seconds      {result.worker_seconds():.0f}  (instances x time, burst to zero)",
        f"   quota used while draining (charged tokens / TPM x time, over {_s(result.measured_s)}"
        f"{'' if result.drained_s is not None else ', not drained'}; middle 80 %; 429s, share"
        " of calls): " + (", ".join(_use(result, name) for name in result.deployments()) or "-"),
        "   per function: backlog first seen, first instance, peak instances (reached at),"
        " quota cap while busy, measured per invocation",
    ]
    for function in result.functions():
        peak, when = result.peak(function)
        caps = result.busy_caps(function)
        cap_text = f"cap {min(caps)}..{max(caps)}" if caps else "no cap"
        profile = result.profiles.get(function)
        measured = (
            f"{profile['seconds']:.2f} s, {profile['tokens']:.0f} tokens ({profile['samples']})"
            if profile and profile["samples"]
            else "-"
        )
        lines.append(
            f"   {function:<17} {_s(result.first('backlog', function)):>7} "
            f"{_s(result.first('instances', function)):>7}  {peak} ({_s(when)})  "
            f"{cap_text}  {measured}"
        )
    lines.append(f"   chart: {path}")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 conversations, quota phase 100")
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--tpm", type=int, default=100_000_000, help="backlog phase quota")
    parser.add_argument("--cooldown", type=float, default=10.0, help="seconds (scale.json: 15)")
    parser.add_argument("--quota-phase", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quota-conversations", type=int, default=300)
    parser.add_argument("--quota-tpm", type=int, default=1_000_000)
    parser.add_argument("--quota-latency-ms", type=float, default=1000.0)
    parser.add_argument(
        "--quota-timeout", type=float, default=600.0, help="seconds the quota phase may take"
    )
    parser.add_argument(
        "--uncapped",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repeat the quota phase with the quota cap off, for comparison",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.conversations < 1 or args.quota_conversations < 1:
        parser.error("conversation counts must be positive")
    if args.quick:
        args.conversations, args.quota_conversations = 200, 100
    return args


def phase_specs(args: argparse.Namespace, limits: ScaleLimits) -> list[PhaseSpec]:
    """The backlog phase, then (unless turned off) the quota phase and its uncapped repeat."""
    phases = [PhaseSpec("backlog", args.conversations, args.latency_ms, args.tpm, limits, 300.0)]
    if args.quota_phase:
        quota = PhaseSpec(
            "quota",
            args.quota_conversations,
            args.quota_latency_ms,
            args.quota_tpm,
            limits,
            args.quota_timeout,
        )
        phases.append(quota)
        if args.uncapped:
            phases.append(replace(quota, name="quota-uncapped", quota_aware=False))
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    limits = replace(ScaleLimits.from_file(SCALE_FILE), cooldown_s=args.cooldown)
    print(
        f"limits: max {limits.max_instances} instances per function, +{limits.max_step_up} per "
        f"step, polling {limits.polling_interval_s:g} s, cooldown {limits.cooldown_s:g} s "
        f"(scale.json, cooldown overridden); targets from host.json"
    )
    phases = phase_specs(args, limits)
    ok = True
    with tempfile.TemporaryDirectory(prefix="burst-") as tmp:
        for spec in phases:
            started = time.monotonic()
            result = asyncio.run(run_phase(spec, Path(tmp)))
            name = "burst.png" if spec.name == "backlog" else f"burst-{spec.name}.png"
            path = args.out / name
            chart(result, path)
            # The samples behind the chart and the quota figures, for a closer look.
            samples = {"burstAt": result.burst_at, "history": result.history, "usage": result.usage}
            path.with_suffix(".json").write_text(json.dumps(samples, indent=1))
            print("\n".join(report(result, path)))
            print(f"   (phase wall time {time.monotonic() - started:.0f} s)")
            ok &= result.zero_s is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
