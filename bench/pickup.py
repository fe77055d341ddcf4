"""Pick-up from idle: how long the first message after an idle spell waits at each stage, and
where that time goes.

    .venv/bin/python -m bench.pickup                       # 3 rounds of 60 s idle per mode
    .venv/bin/python -m bench.pickup --idle 5 --rounds 5   # shorter idle (say so when quoting)
    .venv/bin/python -m bench.pickup --burst 50            # plus: idle, then 50 conversations

Every mode runs a real devhost (simulator, broker, scaler, workers) in its own work directory
under ``bench/out/``, one after the other in the same run:

* ``before``  - every instance is its own interpreter (``python -m devhost.worker``) and the
  scaler steps once per polling interval only: devhost as it was;
* ``bell``    - the same, but a message for a function without instances wakes the scaler
  through the broker's doorbell;
* ``prefork`` - doorbell, and instances forked from the worker template (``devhost.prefork``);
* ``ready1``  - ``prefork`` with one always-ready instance per function (scale.json
  ``alwaysReady``), the Flex Consumption lever.

A round waits until every function is back at its always-ready count (zero, but in ``ready1``)
and then ``--idle`` seconds more, posts one conversation (the cold one), waits for it to
finish, then at once posts a second (the warm one: its instances are running). From the
workers' hop log (``DEVHOST_HOP_LOG``):

* pick-up: the cold message's ``enqueued`` (stamped in the send transaction) to the moment an
  instance invoked the function on it, per stage (ingest: the event's);
* where it went, for the instance started for the cold message (its ``startup`` record):
  ``wake`` enqueued -> the scaler decided to start it; ``start`` -> the instance ran its own
  code (a fork, or an interpreter start plus the import of ``devhost.worker``); ``app`` ->
  the app was loaded (``load_app``: nothing left to do in a forked instance); ``services`` ->
  store, model client and telemetry built; ``receive`` -> the function was invoked (first
  broker connection, receive transaction, hand-over);
* first call: the cold invocation's duration minus the warm one's, per stage (the first model
  client use: connection set-up, lazy imports, caches);
* idle worker-seconds per hour: instances x seconds during the idle spells, per hour: what
  always-ready costs in processes.

``--burst N`` adds, per mode, the issue's cold benchmark: after an idle spell, N conversations
posted at ``--rate`` per second; the end-to-end P95 over the model time on the path (calls x
simulated latency) is printed as the ratio.

The idle spell only matters to devhost through the cooldown (instances stop ``--cooldown`` s
after their last work); ``--idle`` shorter than 60 s measures the same path, faster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.burst_phase import FUNCTION_ORDER
from bench.load import make_requests, post_open_loop, wait_final
from bench.stats import percentile
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.host import SCALE_FILE, Host, SimulatorOptions
from devhost.scaler import FUNCTION_PREFIX, ScaleLimits
from devhost.worker import HOP_LOG_ENV
from shared.bootstrap import load_settings
from shared.config import Settings

OUT = PROJECT_ROOT / "bench" / "out"
PHASES = ("wake", "start", "app", "services", "receive")


@dataclass(frozen=True)
class Mode:
    name: str
    prefork: bool
    wake_on_arrival: bool
    always_ready: int
    what: str


MODES = {
    m.name: m
    for m in (
        Mode("before", False, False, 0, "own interpreter per instance, scaler polls"),
        Mode("bell", False, True, 0, "own interpreter, scaler woken by the doorbell"),
        Mode("prefork", True, True, 0, "forked from the template, doorbell"),
        Mode("ready1", True, True, 1, "prefork + 1 always-ready instance per function"),
    )
}


@dataclass
class Round:
    cold_at: float
    warm_at: float
    ended_at: float
    idle_from: float
    idle_to: float


@dataclass
class ModeResult:
    mode: Mode
    rounds: list[Round] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Hop-log file name -> its records."""
    burst_ratios: list[float] = field(default_factory=list)
    burst_finished: int = 0
    forks: int = 0
    failed_rounds: int = 0


def hop_files(directory: Path) -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        files[path.name] = rows
    return files


def function_of(file_name: str) -> str:
    """``{function}-{instance}-{pid}.jsonl`` -> function."""
    return file_name.rsplit("-", 2)[0]


def worker_seconds(history: Sequence[dict[str, Any]], start: float, end: float) -> float:
    total = 0.0
    for before, after in itertools.pairwise(history):
        lo, hi = max(before["t"], start), min(after["t"], end)
        if hi > lo:
            total += (hi - lo) * sum(before["instances"].values())
    return total


def outcome_and_calls(
    workdir: Workdir, settings: Settings, conversation_id: str
) -> tuple[float | None, int]:
    """When a conversation reached its outcome (epoch seconds) and the model calls on its path,
    read from the stored document as is (no model of it, so fields added later do not matter)."""
    with contextlib.closing(sqlite3.connect(f"file:{workdir.store}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT body FROM documents WHERE container = ? AND id = ?",
            (settings.conversations_container, conversation_id),
        ).fetchone()
    if row is None:
        return None, 0
    doc = json.loads(row[0])
    at = (doc.get("outcome") or {}).get("at")
    usage = [stage.get("usage", {}) for stage in doc.get("stages", {}).values()]
    calls = sum(int(u.get("calls", 0)) - int(u.get("cachedCalls", 0)) for u in usage)
    return (datetime.fromisoformat(at).timestamp() if at else None), calls


async def settled(host: Host, floor: int, timeout_s: float) -> bool:
    """Wait until every function runs exactly its always-ready count and nothing is queued."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at_floor = all(len(host.workers.get(f, [])) == floor for f in host.scalers)
        if at_floor and not any(host.backlogs().values()):
            return True
        await asyncio.sleep(0.1)
    return False


async def measure_round(
    host: Host,
    workdir: Workdir,
    settings: Settings,
    mode: Mode,
    args: argparse.Namespace,
    number: int,
) -> tuple[Round, bool]:
    """One round: ``--idle`` seconds of quiet, a request (cold), then one right after it (warm),
    each waited for until final; the round's times, and whether both finished."""
    assert host.broker is not None
    hub = settings.eventhub_name
    idle_from = time.time()
    await asyncio.sleep(args.idle)
    idle_to = time.time()
    cold = make_requests(1, prefix=f"{mode.name}-cold", seed=number, first=number)
    warm = make_requests(1, prefix=f"{mode.name}-warm", seed=number, first=500 + number)
    cold_at = time.time()
    await post_open_loop(host.broker, hub, cold, 1.0)
    ok = await wait_final(workdir.store, settings, cold, time.monotonic() + 120)
    warm_at = time.time()
    await post_open_loop(host.broker, hub, warm, 1.0)
    ok = await wait_final(workdir.store, settings, warm, time.monotonic() + 120) and ok
    return Round(cold_at, warm_at, time.time(), idle_from, idle_to), ok


async def run_mode(mode: Mode, args: argparse.Namespace, root: Path) -> ModeResult:
    workdir = Workdir(root / mode.name)
    hops = workdir.root / "hops"
    hops.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        HOP_LOG_ENV: str(hops),
        "DEVHOST_CALL_LATENCY_S": str(args.latency_ms / 1000),
    }
    limits = replace(
        ScaleLimits.from_file(SCALE_FILE),
        cooldown_s=args.cooldown,
        always_ready=tuple((FUNCTION_PREFIX + f, mode.always_ready) for f in FUNCTION_ORDER),
    )
    result = ModeResult(mode)
    async with Host(
        workdir,
        simulator=SimulatorOptions(latency_ms=args.latency_ms, tpm=100_000_000),
        http_port=0,
        environ=environ,
        limits=limits,
        prefork=mode.prefork,
        wake_on_arrival=mode.wake_on_arrival,
    ) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        hub = settings.eventhub_name
        for number in range(args.rounds):
            if not await settled(host, mode.always_ready, args.cooldown + 60):
                print(f"  {mode.name}: instances did not settle; measuring anyway", flush=True)
            measured, ok = await measure_round(host, workdir, settings, mode, args, number)
            result.failed_rounds += not ok
            result.rounds.append(measured)
            print(f"  {mode.name}: round {number + 1}/{args.rounds} done", flush=True)
        if args.burst:
            await settled(host, mode.always_ready, args.cooldown + 60)
            await asyncio.sleep(args.idle)
            burst = make_requests(args.burst, prefix=f"{mode.name}-burst", seed=99)
            await post_open_loop(host.broker, hub, burst, args.rate)
            await wait_final(workdir.store, settings, burst, time.monotonic() + 180)
        result.history = list(host.history)
        result.forks = host.template.forks if host.template is not None else 0
    if args.burst:
        latency_s = args.latency_ms / 1000
        for posted in burst:
            at, calls = outcome_and_calls(workdir, settings, posted.conversation_id)
            if at is not None and calls:
                result.burst_finished += 1
                result.burst_ratios.append((at - posted.posted_at) / (calls * latency_s))
    result.records = hop_files(hops)  # the workers flush their logs as they stop
    return result


@dataclass
class StageFigures:
    pickups: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cold_calls: list[float] = field(default_factory=list)
    warm_calls: list[float] = field(default_factory=list)

    def first_call_excess(self) -> float:
        """Median cold invocation minus median warm invocation, seconds."""
        if not self.cold_calls or not self.warm_calls:
            return float("nan")
        return statistics.median(self.cold_calls) - statistics.median(self.warm_calls)


def figures(result: ModeResult) -> dict[str, StageFigures]:
    """Per function: each round's cold pick-up, its phases, and the first-call excess."""
    out: dict[str, StageFigures] = defaultdict(StageFigures)
    for r in result.rounds:
        for name, rows in result.records.items():
            function = function_of(name)
            work = [x for x in rows if x.get("kind") in ("message", "events")]
            cold = [x for x in work if r.cold_at <= x["enqueued"] < r.warm_at]
            warm = [x for x in work if r.warm_at <= x["enqueued"] < r.ended_at]
            if cold:
                first = min(cold, key=lambda x: x["enqueued"])
                out[function].pickups.append(first["invoked"] - first["enqueued"])
                startup = next((x for x in rows if x.get("kind") == "startup"), None)
                if startup and startup.get("decided") and startup["decided"] >= r.cold_at - 0.01:
                    marks = [
                        first["enqueued"],
                        startup["decided"],
                        startup["entered"],
                        startup["appLoaded"],
                        startup["servicesBuilt"],
                        first["invoked"],
                    ]
                    for phase, (a, b) in zip(PHASES, itertools.pairwise(marks), strict=True):
                        out[function].phases[phase].append(b - a)
                out[function].cold_calls.append(first["finished"] - first["invoked"])
            if warm:
                w = min(warm, key=lambda x: x["enqueued"])
                out[function].warm_calls.append(w["finished"] - w["invoked"])
    return out


def _ms(value: float) -> str:
    return "-" if value != value else f"{1000 * value:6.0f}"


def report(results: list[ModeResult], args: argparse.Namespace) -> str:
    lines = [
        f"pick-up from idle: {args.rounds} rounds per mode, idle {args.idle:g} s after the "
        f"cooldown ({args.cooldown:g} s), simulated latency {args.latency_ms:g} ms per call",
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        "",
    ]
    p95: dict[str, dict[str, float]] = {}
    for result in results:
        figs = figures(result)
        lines.append(f"[{result.mode.name}] {result.mode.what}; forks {result.forks}")
        lines.append(
            f"  {'stage':<18}{'n':>3} {'P50 ms':>7} {'P95 ms':>7} | median ms: "
            + " ".join(f"{p:>8}" for p in PHASES)
            + f" {'1st call':>9}"
        )
        p95[result.mode.name] = {}
        for function in FUNCTION_ORDER:
            f = figs.get(function)
            if f is None or not f.pickups:
                continue
            p95[result.mode.name][function] = percentile(f.pickups, 0.95)
            phases = " ".join(
                f"{_ms(statistics.median(f.phases[p])) if f.phases.get(p) else '-':>8}"
                for p in PHASES
            )
            lines.append(
                f"  {function:<18}{len(f.pickups):>3} {_ms(percentile(f.pickups, 0.5)):>7} "
                f"{_ms(percentile(f.pickups, 0.95)):>7} | {'':>10} {phases} "
                f"{_ms(f.first_call_excess()):>9}"
            )
        idle_ws = sum(worker_seconds(result.history, r.idle_from, r.idle_to) for r in result.rounds)
        idle_s = sum(r.idle_to - r.idle_from for r in result.rounds)
        per_hour = idle_ws / idle_s * 3600 if idle_s else float("nan")
        lines.append(f"  idle worker-seconds per hour: {per_hour:,.0f}")
        if result.burst_ratios:
            lines.append(
                f"  burst after idle: {result.burst_finished}/{args.burst} finished, "
                f"end-to-end / model time P50 {percentile(result.burst_ratios, 0.5):.2f}, "
                f"P95 {percentile(result.burst_ratios, 0.95):.2f}"
            )
        if result.failed_rounds:
            lines.append(f"  {result.failed_rounds} round(s) did not finish in time")
        lines.append("")
    base = p95.get("before")
    if base:
        lines.append("pick-up P95 ratio, before / mode (higher is faster), per stage:")
        for name, values in p95.items():
            if name == "before":
                continue
            ratios = [f"{f}={base[f] / v:.1f}" for f, v in values.items() if f in base and v > 0]
            lines.append(f"  {name:<8} " + "  ".join(ratios))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.pickup", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle after cooldown")
    parser.add_argument("--cooldown", type=float, default=3.0, help="scale-in cooldown, s")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="per model call")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument("--burst", type=int, default=0, help="conversations after idle")
    parser.add_argument("--rate", type=float, default=20.0, help="burst: per second")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    root = OUT / f"pickup-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    results = []
    for name in args.modes.split(","):
        print(f"mode {name} ...", flush=True)
        results.append(await run_mode(MODES[name], args, root))
    text = report(results, args)
    print(text)
    (root / "report.txt").write_text(text + "\n", encoding="utf-8")
    return 1 if any(r.failed_rounds for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
