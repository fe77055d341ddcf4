"""Pipeline benchmark: conversations end to end through devhost at a fixed simulated LLM latency.

    python -m bench.pipeline [--conversations 1000] [--rate 20] [--latency-ms 200] [--quick]

A real devhost runs (simulator subprocess, SQLite broker, scaler, one worker process per function
instance) in a fresh work directory under ``bench/out/``. Requests are posted to the hub open-loop:
request ``i`` at ``t0 + i / rate``, whatever the pipeline is doing, so a slow pipeline shows up as
growing latency, not as a lower offered load. The simulator answers every call after exactly
``--latency-ms`` and the quota is ample (``--tpm``), so the model is never the bottleneck and
everything above ``calls x latency`` is the runtime's own overhead.

Before the measured run a few warm-up conversations (``--warmup``, not counted) start the worker
processes: a cold start (importing the app, opening clients) is a one-off cost, not the steady
state this benchmark is about.

What is printed, and how it is measured (all clocks are the one wall clock of this machine):

* end-to-end: from just before the request is published to the hub to the conversation's
  ``outcome.at`` (written by the stage that finished it);
* hops, two ways:
  - broker hop (from the workers' hop log, ``DEVHOST_HOP_LOG``), first deliveries only: from
    the message's ``enqueued_time`` (stamped inside the send transaction, so the send's own
    commit and fsync are included) to the moment a worker started the function on it: the
    doorbell, the wake-up, the receive transaction and the hand-over to the invocation;
  - stage gap (from the conversation documents): from one stage's ``completedAt`` to the next
    stage's ``startedAt``: the stage's conditional store write, the send, the broker hop and
    the next stage's store read. The first gap runs from the conversation's ``createdAt``
    (written by ingest) to the intent stage's start;
* in-stage overhead: a stage's ``completedAt - startedAt`` minus its model calls x latency:
  building the prompt, the HTTP round trip and the simulator's own work, parsing;
* ingest: from publishing to the hub to the conversation's ``createdAt``;
* the overhead ratio (definition printed with the numbers);
* the CPU the benchmark's processes used and the CPU other programs took meanwhile: on a shared
  machine, other programs' load shows up directly in these latencies.

Exits 1 when any conversation did not reach a final status before the timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import (
    Posted,
    make_requests,
    post_open_loop,
    read_docs,
    read_hop_log,
    wait_final,
)
from bench.stats import percentile
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.host import Host, SimulatorOptions
from devhost.worker import HOP_LOG_ENV
from shared.bootstrap import load_settings
from shared.domain.conversation import FINAL_STATUSES, Conversation

OUT = PROJECT_ROOT / "bench" / "out"
QUICK_CONVERSATIONS = 200
RATIO_DEFINITION = (
    "overhead ratio = P95 over conversations of  end-to-end / (model calls on that "
    "conversation's path x simulated latency per call)"
)


@dataclass(frozen=True)
class BenchOptions:
    """One run's parameters."""

    conversations: int = 1000
    rate: float = 20.0
    latency_ms: float = 200.0
    tpm: int = 100_000_000
    warmup: int = 20
    timeout_s: float = 300.0
    seed: int = 7
    workdir: Path | None = None


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds over a span of wall time: this benchmark's own processes, and the machine's."""

    wall_s: float
    ours_s: float
    machine_s: float

    @property
    def others_s(self) -> float:
        """CPU that other programs took meanwhile: it competes with the pipeline for cores."""
        return max(0.0, self.machine_s - self.ours_s)


@dataclass(frozen=True)
class CpuSample:
    """A reading of this process tree's CPU time and the machine's busy time."""

    wall: float
    ours: float
    machine: float

    @classmethod
    def now(cls) -> CpuSample:
        # os.times counts children once they have been waited for: read it after the host
        # has stopped (and reaped) every worker and the simulator.
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return cls(time.monotonic(), ours, _machine_busy_s())

    def __sub__(self, earlier: CpuSample) -> CpuUse:
        return CpuUse(
            self.wall - earlier.wall, self.ours - earlier.ours, self.machine - earlier.machine
        )


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (Linux ``/proc/stat``); 0 elsewhere."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    busy = sum(ticks[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class RunRecord:
    """What a run leaves to be summarised."""

    options: BenchOptions
    workdir: Workdir
    posted: list[Posted]
    docs: list[Conversation]
    posting_s: float
    instances: dict[str, list[int]]
    hop_records: list[dict[str, Any]]
    cpu: CpuUse
    started_at: float = 0.0


@dataclass
class Summary:
    """The numbers the benchmark prints."""

    finished: int
    expected: int
    statuses: dict[str, int]
    throughput: float
    offered_rate: float
    e2e_s: list[float]
    ingest_s: list[float]
    ratios: list[float]
    calls: list[int]
    span_s: float = 0.0
    broker_hops_ms: dict[str, list[float]] = field(default_factory=dict)
    stage_gaps_ms: dict[str, list[float]] = field(default_factory=dict)
    stage_overheads_ms: dict[str, list[float]] = field(default_factory=dict)
    instances_max: dict[str, int] = field(default_factory=dict)
    instances_mean: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- statistics


def model_calls(conversation: Conversation) -> int:
    """Calls that went to the model on this conversation's path (cache hits took no time)."""
    return sum(r.usage.calls - r.usage.cached_calls for r in conversation.stages.values())


def stage_gaps(conversation: Conversation) -> list[tuple[str, float]]:
    """(label, seconds) between consecutive stages: one completing, the next starting."""
    gaps: list[tuple[str, float]] = []
    previous_label, previous_end = "ingest", conversation.created_at
    for record in conversation.records_in_order():
        label = f"{previous_label}->{record.stage.value}"
        gaps.append((label, (record.started_at - previous_end).total_seconds()))
        previous_label, previous_end = record.stage.value, record.completed_at
    return gaps


def stage_overheads(conversation: Conversation, latency_s: float) -> list[tuple[str, float]]:
    """(stage, seconds) a stage took beyond its simulated model time: prompt building, the
    HTTP round trip and the simulator's own work, parsing, and the conditional write."""
    overheads: list[tuple[str, float]] = []
    for record in conversation.stages.values():
        took = (record.completed_at - record.started_at).total_seconds()
        calls = record.usage.calls - record.usage.cached_calls
        overheads.append((record.stage.value, took - calls * latency_s))
    return overheads


def broker_hops(records: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per queue, milliseconds from a message's enqueue to the start of its invocation."""
    hops: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.get("kind") == "message" and record.get("deliveryCount") == 1:
            hops[str(record["source"])].append(1000 * (record["invoked"] - record["enqueued"]))
    return dict(hops)


def summarise(run: RunRecord) -> Summary:
    """Turn a run's documents, hop log and scaler history into the printed numbers."""
    latency_s = run.options.latency_ms / 1000
    posted_at = {p.conversation_id: p.posted_at for p in run.posted}
    statuses = Counter(c.status for c in run.docs)
    e2e: list[float] = []
    ingest: list[float] = []
    ratios: list[float] = []
    calls: list[int] = []
    gaps: dict[str, list[float]] = defaultdict(list)
    inside: dict[str, list[float]] = defaultdict(list)
    for doc in run.docs:
        if not doc.is_final:
            continue
        sent = posted_at[doc.conversation_id]
        done = doc.outcome.at.timestamp() if doc.outcome and doc.outcome.at else None
        ingest.append(doc.created_at.timestamp() - sent)
        for label, seconds in stage_gaps(doc):
            gaps[label].append(1000 * seconds)
            gaps["all"].append(1000 * seconds)
        for stage, seconds in stage_overheads(doc, latency_s):
            inside[stage].append(1000 * seconds)
            inside["all"].append(1000 * seconds)
        if done is None:
            continue
        n = model_calls(doc)
        calls.append(n)
        e2e.append(done - sent)
        if n:
            ratios.append((done - sent) / (n * latency_s))
    finished = sum(statuses[s] for s in FINAL_STATUSES)
    outcomes = [d.outcome.at.timestamp() for d in run.docs if d.outcome and d.outcome.at]
    first_post = min((p.posted_at for p in run.posted), default=0.0)
    span = max(outcomes, default=first_post) - first_post
    hops = broker_hops(run.hop_records)
    hops["all"] = [h for values in hops.values() for h in values]
    return Summary(
        finished=finished,
        expected=len(run.posted),
        statuses=dict(statuses),
        throughput=finished / span if span > 0 else 0.0,
        span_s=span,
        offered_rate=len(run.posted) / run.posting_s if run.posting_s > 0 else 0.0,
        e2e_s=e2e,
        ingest_s=ingest,
        ratios=ratios,
        calls=calls,
        broker_hops_ms=hops,
        stage_gaps_ms=dict(gaps),
        stage_overheads_ms=dict(inside),
        instances_max={name: max(counts, default=0) for name, counts in run.instances.items()},
        instances_mean={
            name: statistics.fmean(counts) if counts else 0.0
            for name, counts in run.instances.items()
        },
    )


# --------------------------------------------------------------------------- the run


async def run(options: BenchOptions) -> RunRecord:
    """Start devhost, warm it up, post the measured requests open-loop, wait, collect."""
    root = options.workdir or OUT / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    workdir = Workdir(root)
    hop_dir = root / "hops"
    hop_dir.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        HOP_LOG_ENV: str(hop_dir),
        # The scaler's quota cap assumes this call latency.
        "DEVHOST_CALL_LATENCY_S": str(options.latency_ms / 1000),
    }
    simulator = SimulatorOptions(latency_ms=options.latency_ms, tpm=options.tpm)
    cpu_before = CpuSample.now()
    async with Host(workdir, simulator=simulator, http_port=0, environ=environ) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        hub = settings.eventhub_name
        if options.warmup:
            warm = make_requests(options.warmup, prefix="warm", seed=options.seed, first=800_000)
            print(f"warm-up: {len(warm)} conversations (not counted) ...", flush=True)
            await post_open_loop(host.broker, hub, warm, options.rate)
            if not await wait_final(workdir.store, settings, warm, time.monotonic() + 120):
                print("warm-up conversations did not finish; measuring anyway", flush=True)
        measured = make_requests(options.conversations, prefix="bench", seed=options.seed)
        history_since = time.time()  # Host.history is bounded: select by time, not index
        print(
            f"posting {len(measured)} conversations at {options.rate:g}/s, "
            f"simulated latency {options.latency_ms:g} ms per call ...",
            flush=True,
        )
        started = time.time()
        t0 = time.monotonic()
        await post_open_loop(host.broker, hub, measured, options.rate)
        posting_s = time.monotonic() - t0
        await wait_final(workdir.store, settings, measured, t0 + posting_s + options.timeout_s)
        history = [sample for sample in host.history if sample["t"] >= history_since]
    (root / "scaling.json").write_text(json.dumps(history), encoding="utf-8")
    # Workers flush their hop logs as they stop, so read them after the host is down.
    docs = await read_docs(workdir, settings, measured)
    instances: dict[str, list[int]] = defaultdict(list)
    for tick in history:
        for name, count in tick["instances"].items():
            instances[name].append(int(count))
    cpu = CpuSample.now() - cpu_before
    return RunRecord(
        cpu=cpu,
        options=options,
        workdir=workdir,
        posted=measured,
        docs=docs,
        posting_s=posting_s,
        instances=dict(instances),
        hop_records=read_hop_log(hop_dir, started),
        started_at=started,
    )


# --------------------------------------------------------------------------- report


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"P50 {percentile(values, 0.5):7.1f} ms  P95 {percentile(values, 0.95):7.1f} ms"
        f"  P99 {percentile(values, 0.99):7.1f} ms  (n={len(values)})"
    )


def report(run_record: RunRecord, summary: Summary) -> str:
    """The printed report, as text."""
    o = run_record.options
    lines = [
        f"pipeline benchmark: {summary.expected} conversations offered at {o.rate:g}/s "
        f"(achieved offer {summary.offered_rate:.2f}/s), simulated latency "
        f"{o.latency_ms:g} ms per call, {o.tpm:,} TPM, {os.cpu_count()} CPUs",
        f"workdir: {run_record.workdir.root}",
        f"CPU over the whole run ({run_record.cpu.wall_s:.0f} s, start-up and warm-up included): "
        f"this benchmark {run_record.cpu.ours_s:.0f} s, other programs "
        f"{run_record.cpu.others_s:.0f} s, of {run_record.cpu.wall_s * (os.cpu_count() or 1):.0f} "
        "core-seconds",
        f"finished: {summary.finished}/{summary.expected}  "
        + ", ".join(f"{k}: {v}" for k, v in sorted(summary.statuses.items())),
        f"throughput: {summary.throughput:.2f} conversations/s "
        f"(finished / {summary.span_s:.1f} s from the first post to the last outcome)",
        f"end-to-end:  {_ms([1000 * s for s in summary.e2e_s])}",
        f"ingest (post -> conversation created): {_ms([1000 * s for s in summary.ingest_s])}",
    ]
    if summary.calls:
        spread = Counter(summary.calls)
        lines.append(
            f"model calls per conversation: mean {statistics.fmean(summary.calls):.2f}  ("
            + ", ".join(f"{k} calls: {v}" for k, v in sorted(spread.items()))
            + ")"
        )
    lines.append(RATIO_DEFINITION)
    lines.append(
        f"overhead ratio: P50 {percentile(summary.ratios, 0.5):.3f}  "
        f"P95 {percentile(summary.ratios, 0.95):.3f}  (target <= 1.1)"
    )
    by_calls: dict[int, list[float]] = defaultdict(list)
    for seconds, n in zip(summary.e2e_s, summary.calls, strict=True):
        by_calls[n].append(seconds)
    if by_calls:
        common = max(by_calls, key=lambda n: len(by_calls[n]))
        p95 = percentile(by_calls[common], 0.95)
        lines.append(
            f"  for the commonest path ({common} calls, n={len(by_calls[common])}): P95 "
            f"end-to-end {1000 * p95:.0f} ms / {common * o.latency_ms:.0f} ms of model time "
            f"= {p95 / (common * o.latency_ms / 1000):.3f}"
        )
    lines.append("broker hop (message enqueued -> function invoked, first deliveries):")
    for name, values in sorted(summary.broker_hops_ms.items()):
        lines.append(f"  {name:<22} {_ms(values)}")
    lines.append("stage gap (previous stage completedAt -> next stage startedAt):")
    for name, values in sorted(summary.stage_gaps_ms.items()):
        lines.append(f"  {name:<22} {_ms(values)}")
    lines.append("in-stage overhead (completedAt - startedAt - model calls x latency):")
    for name, values in sorted(summary.stage_overheads_ms.items()):
        lines.append(f"  {name:<22} {_ms(values)}")
    lines.append(
        "instances per function (max / mean over the run): "
        + ", ".join(
            f"{name} {summary.instances_max[name]}/{summary.instances_mean[name]:.1f}"
            for name in sorted(summary.instances_max)
        )
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--conversations", type=int, default=None)
    parser.add_argument("--rate", type=float, default=20.0, help="conversations per second")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="per model call")
    parser.add_argument("--tpm", type=int, default=100_000_000, help="quota per deployment")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted warm-up conversations")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds after posting")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="default: bench/out/pipeline-<time>")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CONVERSATIONS} conversations, a smoke run"
    )
    args = parser.parse_args(argv)
    conversations = args.conversations or (QUICK_CONVERSATIONS if args.quick else 1000)
    if conversations < 1 or args.rate <= 0 or args.latency_ms <= 0 or args.tpm <= 0:
        parser.error("--conversations, --rate, --latency-ms and --tpm must be positive")
    if args.warmup < 0 or args.timeout <= 0:
        parser.error("--warmup must be >= 0 and --timeout positive")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty; every run needs a fresh one")
    return BenchOptions(
        conversations=conversations,
        rate=args.rate,
        latency_ms=args.latency_ms,
        tpm=args.tpm,
        warmup=args.warmup,
        timeout_s=args.timeout,
        seed=args.seed,
        workdir=args.workdir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    record = asyncio.run(run(options))
    summary = summarise(record)
    print(report(record, summary))
    if summary.finished < summary.expected:
        print(
            f"{summary.expected - summary.finished} conversations did not finish; "
            f"see {record.workdir.logs}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
