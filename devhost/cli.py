"""The devhost command line: run, send, demo, status, dlq list, dlq replay."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from devhost.broker import Broker, EventSpec
from devhost.environment import PROJECT_ROOT, Workdir, app_settings, uses_external_llm
from devhost.host import Host, SimulatorOptions
from shared.adapters.sqlite_store import SqliteDocumentStore
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.messages import Stage, conversation_id_for
from shared.ports import Doc

DATA = Path(__file__).parent / "data"
FINAL = {"answered", "escalated", "rejected", "failed"}
console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT / ".devhost")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the host and the simulator until Ctrl-C")
    run.add_argument("--port", type=int, default=7071, help="HTTP triggers port (127.0.0.1)")
    _simulator_args(run)

    send = sub.add_parser("send", help="post requests (JSON Lines) to the Event Hub stand-in")
    send.add_argument("file", help="a .jsonl file, or - for stdin")

    demo = sub.add_parser("demo", help="run ~50 requests and a batch file end to end")
    demo.add_argument("--timeout", type=float, default=300.0)
    _simulator_args(demo, tpm=1_000_000)

    sub.add_parser("status", help="backlog, in flight, dead-lettered; instances per function")

    dlq = sub.add_parser("dlq", help="dead-lettered messages")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--queue")
    dlq_replay = dlq_sub.add_parser("replay")
    dlq_replay.add_argument("--queue")
    dlq_replay.add_argument("--id", action="append", dest="ids")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    workdir = Workdir(args.workdir)
    if args.command == "run":
        return asyncio.run(_run(workdir, args))
    if args.command == "send":
        return _send(workdir, args.file)
    if args.command == "demo":
        return asyncio.run(_demo(workdir, args))
    if args.command == "status":
        return _status(workdir)
    return _dlq(workdir, args)


def _simulator_args(parser: argparse.ArgumentParser, *, tpm: int | None = None) -> None:
    parser.add_argument("--latency-ms", type=float, help="fixed simulated latency per call")
    parser.add_argument(
        "--tpm",
        type=int,
        default=tpm,
        help="tokens per minute for every deployment, in the simulator and the app's limiter"
        + (f" (default {tpm})" if tpm else " (default: LLM_DEPLOYMENT_TPM)"),
    )


def _simulator(args: argparse.Namespace) -> SimulatorOptions | None:
    if uses_external_llm():
        return None
    return SimulatorOptions(latency_ms=args.latency_ms, tpm=args.tpm)


def _settings(workdir: Workdir) -> Settings:
    return load_settings(app_settings(workdir, simulator_url="http://127.0.0.1:1"))


# --------------------------------------------------------------------------- run


async def _run(workdir: Workdir, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Host(workdir, simulator=_simulator(args), http_port=args.port) as host:
        console.print(
            f"devhost: HTTP on http://127.0.0.1:{host.http_port}/api, "
            f"LLM {host.simulator_url or 'external endpoint'}, state in {workdir.root}\n"
            f"send requests with: python -m devhost send FILE.jsonl; "
            f"drop batch files into {workdir.inbox / 'batches'}; Ctrl-C stops."
        )
        with Live(_status_table(workdir), console=console, refresh_per_second=2) as live:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    live.update(_status_table(workdir))
    return 0


# --------------------------------------------------------------------------- send


def _read_lines(source: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    return [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]


def _partition_key(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("customerId", data.get("customer_id")) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def publish_requests(
    broker: Broker, settings: Settings, lines: list[bytes], *, progress: bool
) -> int:
    """Send each line as one event, keyed by customer so a customer's requests stay in order."""
    hub = settings.eventhub_name
    scale = json.loads((PROJECT_ROOT / "scale.json").read_text())
    broker.ensure_hub(hub, partitions=int(scale.get("eventHubPartitions", 4)))
    chunk = 100
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"sending to {hub}", total=len(lines))
        for start in range(0, len(lines), chunk):
            part = lines[start : start + chunk]
            broker.publish_batch(
                hub, [EventSpec(body=b, partition_key=_partition_key(b)) for b in part]
            )
            bar.advance(task, len(part))
    return len(lines)


def _send(workdir: Workdir, source: str) -> int:
    workdir.create()
    lines = _read_lines(source)
    with Broker(workdir.broker) as broker:
        sent = publish_requests(broker, _settings(workdir), lines, progress=True)
    console.print(f"sent {sent} requests")
    return 0


# --------------------------------------------------------------------------- demo


async def _demo(workdir: Workdir, args: argparse.Namespace) -> int:
    demo_dir = Workdir(workdir.root / "demo")
    if demo_dir.root.exists():
        shutil.rmtree(demo_dir.root)
    lines = (DATA / "demo_requests.jsonl").read_bytes().splitlines()
    requests = [json.loads(line) for line in lines]
    expected = [
        conversation_id_for(r["customerId"], r.get("idempotencyKey"), fallback="") for r in requests
    ]
    started = time.time()
    async with Host(demo_dir, simulator=_simulator(args), http_port=0) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        store = SqliteDocumentStore(
            str(demo_dir.store), partition_keys=settings.container_partition_keys
        )
        try:
            publish_requests(host.broker, settings, lines, progress=False)
            batch_target = demo_dir.inbox / settings.batch_container / "demo_batch.csv"
            batch_target.parent.mkdir(parents=True, exist_ok=True)
            tmp = batch_target.with_suffix(".part")
            shutil.copy(DATA / "demo_batch.csv", tmp)
            tmp.rename(batch_target)  # atomic: the poller never sees half a file
            console.print(
                f"demo: {len(lines)} requests sent to the hub, 1 batch file dropped; "
                f"HTTP API on http://127.0.0.1:{host.http_port}/api"
            )
            docs = await _watch(store, settings, expected, timeout=args.timeout)
        finally:
            await store.close()
    elapsed = time.time() - started
    return _report(docs, elapsed, demo_dir)


async def _collect(
    store: SqliteDocumentStore, settings: Settings, expected: list[str]
) -> list[Doc]:
    docs: list[Doc] = []
    for cid in expected:
        doc = await store.read(settings.conversations_container, cid, partition_key=cid)
        docs.append(doc or {"conversationId": cid, "status": "pending", "stages": {}})
    batches = await store.query_eq(
        settings.batches_container, "blobName", f"{settings.batch_container}/demo_batch.csv"
    )
    for batch in batches:
        docs.extend(
            await store.query_eq(settings.conversations_container, "batchId", batch["batchId"])
        )
    return docs


def _progress_table(docs: list[Doc]) -> Table:
    table = Table(title="Switchboard demo: progress per stage")
    for column in ("stage", "records written"):
        table.add_column(column)
    for stage in Stage:
        count = sum(
            1 for d in docs for key in d.get("stages", {}) if key.startswith(stage.value + ":")
        )
        table.add_row(stage.value, str(count))
    statuses: dict[str, int] = {}
    for doc in docs:
        statuses[str(doc.get("status"))] = statuses.get(str(doc.get("status")), 0) + 1
    table.add_row(
        "[bold]conversations[/bold]", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    return table


async def _watch(
    store: SqliteDocumentStore, settings: Settings, expected: list[str], *, timeout: float
) -> list[Doc]:
    deadline = time.time() + timeout
    docs = await _collect(store, settings, expected)
    with Live(_progress_table(docs), console=console, refresh_per_second=4) as live:
        while time.time() < deadline:
            docs = await _collect(store, settings, expected)
            live.update(_progress_table(docs))
            batch_seen = len(docs) > len(expected)
            if batch_seen and all(d.get("status") in FINAL for d in docs):
                break
            await asyncio.sleep(0.5)
    return docs


def _seconds(doc: Doc) -> float | None:
    outcome = doc.get("outcome") or {}
    if not outcome.get("at") or not doc.get("createdAt"):
        return None
    return (
        datetime.fromisoformat(outcome["at"]) - datetime.fromisoformat(doc["createdAt"])
    ).total_seconds()


def _report(docs: list[Doc], elapsed: float, workdir: Workdir) -> int:
    table = Table(title="Outcomes")
    for column in (
        "conversation",
        "channel",
        "intent",
        "outcome",
        "revisions",
        "tokens",
        "seconds",
    ):
        table.add_column(column)
    for doc in docs:
        stages = doc.get("stages", {})
        intent = (stages.get("intent:0") or {}).get("result") or {}
        outcome = doc.get("outcome") or {}
        detail = outcome.get("team", "") if doc.get("status") == "escalated" else ""
        revisions = max((s.get("revision", 0) for s in stages.values()), default=0)
        seconds = _seconds(doc)
        table.add_row(
            doc["conversationId"][:14],
            str(doc.get("channel", "")),
            str(intent.get("label", "-")),
            f"{doc.get('status')}{' → ' + detail if detail else ''}",
            str(revisions),
            str(
                doc.get("tokens", {}).get("total", {}).get("promptTokens", 0)
                + doc.get("tokens", {}).get("total", {}).get("completionTokens", 0)
            ),
            f"{seconds:.2f}" if seconds is not None else "-",
        )
    console.print(table)
    done = [d for d in docs if d.get("status") in FINAL]
    latencies = sorted(s for d in done if (s := _seconds(d)) is not None)
    counts: dict[str, int] = {}
    for doc in docs:
        counts[str(doc.get("status"))] = counts.get(str(doc.get("status")), 0) + 1
    summary = Table(title="Timing summary")
    summary.add_column("measure")
    summary.add_column("value")
    summary.add_row("conversations", str(len(docs)))
    summary.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    summary.add_row("wall time (s)", f"{elapsed:.1f}")
    summary.add_row("conversations/s", f"{len(done) / elapsed:.2f}")
    if latencies:
        summary.add_row("end-to-end P50 (s)", f"{statistics.median(latencies):.2f}")
        summary.add_row(
            "end-to-end P95 (s)", f"{latencies[max(0, int(len(latencies) * 0.95) - 1)]:.2f}"
        )
    tokens = sum(
        int(d.get("tokens", {}).get("total", {}).get(k, 0))
        for d in docs
        for k in ("promptTokens", "completionTokens")
    )
    calls = sum(int(d.get("tokens", {}).get("total", {}).get("calls", 0)) for d in docs)
    summary.add_row("model calls / tokens", f"{calls} / {tokens}")
    summary.add_row("state", str(workdir.root))
    console.print(summary)
    pending = len(docs) - len(done)
    if pending:
        console.print(f"[red]{pending} conversations did not finish; see {workdir.logs}[/red]")
        return 1
    return 0


# --------------------------------------------------------------------------- status and dlq


def _status_table(workdir: Workdir) -> Table:
    """Per queue and hub: counts from the broker, and the function that drains it with its
    instances (running / ceiling), what bound its last scaling decision, and its quota cap."""
    table = Table(title=f"devhost status ({workdir.root})")
    columns = ("queue / hub", "backlog", "scheduled", "in flight", "dead-lettered", "function")
    for column in (*columns, "instances / ceiling", "bound by", "quota cap"):
        table.add_column(column)
    state: dict[str, Any] = {}
    if workdir.state.exists():
        state = json.loads(workdir.state.read_text()).get("functions", {})
    if not workdir.broker.exists():
        return table
    by_source = {
        str(info.get("source") or name.removesuffix("_agent")): (name, info)
        for name, info in state.items()
    }

    def scaling(source: str) -> tuple[str, str, str, str]:
        name, info = by_source.get(source, ("-", {}))
        if not info:
            return name, "-", "-", "-"
        ceilings = [int(info[k]) for k in ("max", "cap", "quotaCap") if info.get(k) is not None]
        instances = str(info.get("instances", 0)) + (f" / {min(ceilings)}" if ceilings else "")
        quota = "-" if info.get("quotaCap") is None else str(info["quotaCap"])
        profile = info.get("profile")
        if info.get("quotaCap") is not None and profile:
            # What the cap was computed from: seconds and tokens per invocation.
            seconds, tokens = profile["secondsPerInvocation"], profile["tokensPerInvocation"]
            quota += f" ({seconds:.2f} s, {tokens} tok)"
        return name, instances, str(info.get("bound", "-")), quota

    with Broker(workdir.broker) as broker:
        for queue, stats in sorted(broker.queue_stats().items()):
            table.add_row(
                queue,
                str(stats.active),
                str(stats.scheduled),
                str(stats.locked),
                str(stats.deadlettered),
                *scaling(queue),
            )
        settings = _settings(workdir)
        try:
            partitions = broker.hub_stats(settings.eventhub_name, settings.eventhub_consumer_group)
        except Exception:
            partitions = {}
        if partitions:
            table.add_row(
                f"{settings.eventhub_name} (hub)",
                str(sum(p.backlog for p in partitions.values())),
                "-",
                "-",
                "-",
                *scaling(settings.eventhub_name),
            )
    return table


def _status(workdir: Workdir) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}; start it with: python -m devhost run")
        return 1
    console.print(_status_table(workdir))
    return 0


def _dlq(workdir: Workdir, args: argparse.Namespace) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}")
        return 1
    settings = _settings(workdir)
    parking = settings.queues.deadletter
    with Broker(workdir.broker) as broker:
        queues = [args.queue] if args.queue else [q for q in broker.queues()]
        if args.dlq_command == "list":
            table = Table(title="dead-lettered messages")
            for column in ("queue", "message id", "reason", "description", "deliveries"):
                table.add_column(column)
            for queue in queues:
                for dead in broker.deadletters(queue, limit=500):
                    table.add_row(
                        f"{queue}/$deadletterqueue",
                        dead.message_id,
                        dead.reason,
                        dead.description[:80],
                        str(dead.delivery_count),
                    )
                if queue == parking:
                    for msg in broker.peek(parking, limit=500):
                        props = msg.application_properties
                        table.add_row(
                            f"{props.get('OriginalQueue', '?')} (parked)",
                            str(props.get("OriginalMessageId", msg.message_id)),
                            str(props.get("DeadLetterReason", "")),
                            str(props.get("DeadLetterErrorDescription", ""))[:80],
                            str(msg.delivery_count),
                        )
            console.print(table)
            return 0
        replayed = 0
        for queue in queues:
            if queue == parking:
                replayed += _replay_parked(broker, parking, args.ids)
            else:
                replayed += broker.replay_deadletters(queue, message_ids=args.ids)
        console.print(f"replayed {replayed} messages")
        return 0


def _replay_parked(broker: Broker, parking: str, ids: list[str] | None) -> int:
    """Send parked messages back to the queue they came from, under a fresh message id."""
    count = 0
    for msg in broker.receive(parking, max_messages=500, owner="dlq-replay"):
        props = msg.application_properties
        original = str(props.get("OriginalMessageId", msg.message_id))
        if ids and original not in ids:
            broker.abandon(parking, msg.lock_token)
            continue
        target = str(props.get("OriginalQueue", ""))
        if not target:
            broker.abandon(parking, msg.lock_token)
            continue
        broker.send(
            target,
            msg.body,
            message_id=f"{original}:replay:{int(time.time())}"[-128:],
            correlation_id=msg.correlation_id,
            content_type=msg.content_type,
        )
        broker.complete(parking, msg.lock_token)
        count += 1
    return count
