"""The devhost command line: run, send, demo, status, conversations, show, dlq list|replay,
dashboard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
import webbrowser
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from devhost import desk, doctor
from devhost.amqp.server import DEFAULT_PORT as AMQP_DEFAULT_PORT
from devhost.broker import Broker, EventPosition, EventSpec
from devhost.dashboard import dashboard_url
from devhost.environment import (
    PROJECT_ROOT,
    Workdir,
    app_settings,
    running_host,
    uses_external_llm,
)
from devhost.host import SCALE_FILE, Host, HostError, SimulatorOptions, WorkdirLock, cannot_write
from devhost.http import function_key
from devhost.quota_status import quota_lines
from devhost.scaler import ScaleLimits
from shared.adapters.local.sqlite import storage_problem
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.domain.conversation import FINAL_STATUSES, Conversation
from shared.domain.messages import (
    EVENT_HUBS_MAX_BYTES,
    Stage,
    conversation_id_for,
    event_identity,
    utcnow,
)
from shared.domain.request_contract import RejectionCode, customer_hint, event_document_id
from shared.errors import ConfigError, InvalidInput
from shared.ports import Doc

DATA = Path(__file__).parent / "data"
# Piped output gets room for the tables rather than the 80 columns assumed off a terminal.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT / ".devhost")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the host and the simulator until Ctrl-C")
    run.add_argument("--port", type=int, default=7071, help="HTTP triggers port (127.0.0.1)")
    run.add_argument(
        "--amqp-port",
        type=int,
        help="AMQP 1.0 port for the Azure SDKs on 127.0.0.1 (default DEVHOST_AMQP_PORT, else "
        "5672; DEVHOST_AMQP_PORT=off turns it off)",
    )
    _simulator_args(run)

    send = sub.add_parser("send", help="post requests (JSON Lines) to the Event Hub stand-in")
    send.add_argument("file", nargs="?", help="a .jsonl file, or - for stdin")
    send.add_argument(
        "--poison",
        action="store_true",
        help="instead, put one message the intent agent cannot decode on its queue: it is "
        "parked as a dead letter with its reason (see dlq list, or the dashboard)",
    )
    framing = send.add_mutually_exclusive_group()
    framing.add_argument(
        "--raw",
        action="store_true",
        help="send every line's bytes exactly as they are (no stripping; blank lines too)",
    )
    framing.add_argument(
        "--one", action="store_true", help="send the whole file, byte for byte, as one event"
    )
    send.add_argument(
        "--wait", action="store_true", help="follow the requests to their outcomes, then list them"
    )
    send.add_argument("--timeout", type=float, default=300.0, help="how long --wait waits")

    demo = sub.add_parser("demo", help="run ~50 requests and a batch file end to end")
    demo.add_argument("--timeout", type=float, default=300.0)
    _simulator_args(demo, tpm=1_000_000)

    sub.add_parser(
        "status",
        help="backlog, in flight, dead-lettered; instances per function",
        description=STATUS_LEGEND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    board = sub.add_parser("dashboard", help="print the dashboard's address (and open it)")
    board.add_argument("--no-open", action="store_true", help="print the address only")

    listing = sub.add_parser("conversations", help="the latest conversations and their outcomes")
    listing.add_argument("--status", choices=sorted(FINAL_STATUSES | {"received", "in_progress"}))
    listing.add_argument("--limit", type=int, default=25)

    refused = sub.add_parser("rejections", help="requests the contract refused, with reasons")
    refused.add_argument("--code", choices=[c.value for c in RejectionCode])
    refused.add_argument("--limit", type=int, default=25)

    batches = sub.add_parser("batches", help="batch documents with their counts and rejections")
    batches.add_argument("--limit", type=int, default=25)

    show = sub.add_parser("show", help="one conversation or batch record, as stored")
    show.add_argument("id", help="a conversation id (c-…, r-…) or a batch id (b-…)")

    dlq = sub.add_parser("dlq", help="dead-lettered messages")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--queue")
    dlq_replay = dlq_sub.add_parser("replay")
    dlq_replay.add_argument("--queue")
    dlq_replay.add_argument("--id", action="append", dest="ids")

    sub.add_parser("doctor", help="check the workdir's state files; exit 1 on problems")
    reset = sub.add_parser("reset", help="move (or delete) the workdir's state files")
    reset.add_argument(
        "--keep-backup",
        action="store_true",
        help="move them to backups/<time>/ in the workdir (without it they are deleted)",
    )

    desk.add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    workdir = Workdir(args.workdir)
    try:
        return _dispatch(workdir, args)
    except (ConfigError, HostError) as exc:
        console.print(f"[red]devhost: {exc}[/red]")
        return 2
    except Exception as exc:
        # A write the file system refused (read-only workdir, full disk): one line, no traceback.
        problem = storage_problem(exc, within=workdir.root)
        if problem is None:
            raise
        console.print(f"devhost: {cannot_write(workdir.root, problem)}", markup=False)
        return 2


def _dispatch(workdir: Workdir, args: argparse.Namespace) -> int:
    handled = desk.dispatch(workdir, args)
    if handled is not None:
        return handled
    if args.command == "run":
        return asyncio.run(_run(workdir, args))
    if args.command == "send":
        return asyncio.run(_send(workdir, args))
    if args.command == "demo":
        return asyncio.run(_demo(workdir, args))
    if args.command == "status":
        return _status(workdir)
    if args.command == "dashboard":
        return _dashboard(workdir, open_it=not args.no_open)
    if args.command == "doctor":
        return doctor.doctor(workdir, _say)
    if args.command == "reset":
        return doctor.reset_command(workdir, keep_backup=args.keep_backup, say=_say)
    if args.command == "conversations":
        return asyncio.run(_conversations(workdir, args))
    if args.command == "show":
        return asyncio.run(_show(workdir, args.id))
    if args.command == "rejections":
        return asyncio.run(_rejections(workdir, args))
    if args.command == "batches":
        return asyncio.run(_batches(workdir, args))
    return _dlq(workdir, args)


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


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


def open_store(workdir: Workdir, settings: Settings) -> SqliteDocumentStore:
    """The store the workers of ``workdir`` write to."""
    return SqliteDocumentStore(str(workdir.store), partition_keys=settings.container_partition_keys)


def _settings(workdir: Workdir) -> Settings:
    return load_settings(app_settings(workdir, simulator_url="http://127.0.0.1:1"))


# --------------------------------------------------------------------------- run


def _amqp_port(args: argparse.Namespace) -> tuple[int | None, bool]:
    """The AMQP port: the flag, else ``DEVHOST_AMQP_PORT`` (``off``: none), else 5672; and
    whether it was asked for (a port taken is then an error, not a warning)."""
    if args.amqp_port is not None:
        return int(args.amqp_port), True
    raw = os.environ.get("DEVHOST_AMQP_PORT", "").strip()
    if raw.lower() == "off":
        return None, False
    if not raw:
        return AMQP_DEFAULT_PORT, False
    try:
        return int(raw), True
    except ValueError:
        raise HostError(f"setting DEVHOST_AMQP_PORT: {raw!r} is not a port number or off") from None


async def _run(workdir: Workdir, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    amqp_port, amqp_asked = _amqp_port(args)
    async with Host(
        workdir,
        simulator=_simulator(args),
        http_port=args.port,
        amqp_port=amqp_port,
        amqp_required=amqp_asked,
    ) as host:
        if host.amqp is not None:
            console.print(
                f"AMQP (Service Bus and Event Hubs SDKs): {host.amqp.connection_string()}",
                soft_wrap=True,
                markup=False,
            )
        console.print(
            f"devhost: HTTP on http://127.0.0.1:{host.http_port}/api, "
            f"LLM {host.simulator_url or 'external endpoint'}, state in {workdir.root}\n"
            f"function key (?code= or x-functions-key): {host.function_key}\n"
            f"dashboard: {dashboard_url(f'http://127.0.0.1:{host.http_port}', host.function_key)}\n"
            f"send requests with: python -m devhost send FILE.jsonl; "
            f"drop batch files into {workdir.inbox / 'batches'}; Ctrl-C stops.",
            soft_wrap=True,
        )
        if not console.is_terminal:
            await _log_status(workdir, host, stop)
            return 0
        with Live(_status_table(workdir), console=console, refresh_per_second=2) as live:
            while not stop.is_set() and not host.failed.is_set():  # failed: raised on exit
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    live.update(_status_table(workdir))
    return 0


STATUS_LINE_EVERY_S = 5.0
"""How often ``devhost run`` prints a status line when its output is not a terminal."""


async def _log_status(workdir: Workdir, host: Host, stop: asyncio.Event) -> None:
    """Off a terminal (piped, in a log), a status line per interval instead of a live table:
    when the counts changed, and once a minute regardless."""
    last, printed = "", 0.0
    while not stop.is_set() and not host.failed.is_set():
        line = status_line(workdir)
        if line != last or time.monotonic() - printed >= 60.0:
            console.print(
                time.strftime("%H:%M:%S ") + line, markup=False, highlight=False, soft_wrap=True
            )
            last, printed = line, time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_LINE_EVERY_S)


def status_line(workdir: Workdir) -> str:
    """One line: per queue (and the hub) waiting / in flight / scheduled and its instances,
    then the dead letters (dead-lettered by the broker, or parked by the pipeline)."""
    host = running_host(workdir)
    state: dict[str, Any] = host.get("functions", {}) if host else {}
    instances = {str(i.get("source")): int(i.get("instances", 0)) for i in state.values()}
    parts = []
    dead = 0
    settings = _settings(workdir)
    with Broker(workdir.broker) as broker:
        with contextlib.suppress(Exception):  # the hub exists once something was sent
            hub = broker.hub_stats(settings.eventhub_name, settings.eventhub_consumer_group)
            waiting = sum(p.backlog for p in hub.values())
            ingest = instances.get(settings.eventhub_name, 0)
            parts.append(f"hub {waiting} waiting, ingest x{ingest}")
        for queue, q in sorted(broker.queue_stats().items()):
            dead += q.deadlettered
            if queue == settings.queues.deadletter:
                dead += q.active + q.scheduled
                continue
            if queue not in instances and not (q.active or q.locked or q.scheduled):
                continue  # an idle entity no function drains (a topic's subscription)
            parts.append(
                f"{queue} {q.active} waiting/{q.locked} in flight/{q.scheduled} scheduled"
                f" x{instances.get(queue, 0)}"
            )
    return "; ".join(parts) + f"; dead letters {dead}"


# --------------------------------------------------------------------------- send


def read_events(data: bytes, *, raw: bool = False, one: bool = False) -> list[tuple[int, bytes]]:
    """The event bodies in ``data``, each with its line number.

    By default each non-blank line is a body, with a trailing CR removed (files written on
    Windows). ``raw`` keeps every line's bytes exactly, blank lines included (only the "\n"
    that ends a line is not part of it); ``one`` makes the whole input a single body.
    """
    if one:
        return [(1, data)]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line starts no new one
    if raw:
        return list(enumerate(lines, 1))
    lines = [line.removesuffix(b"\r") for line in lines]
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _read_input(source: str) -> bytes:
    return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()


def _partition_key(body: bytes) -> str | None:
    """The customer's id, so one customer's requests stay in order; None for a body the
    contract cannot read (it is refused by ingest all the same)."""
    return customer_hint(body)


def publish_requests(
    broker: Broker, settings: Settings, lines: list[bytes], *, progress: bool
) -> list[EventPosition]:
    """Send each line as one event, keyed by customer so a customer's requests stay in order."""
    hub = settings.eventhub_name
    broker.ensure_hub(hub, partitions=ScaleLimits.from_file(SCALE_FILE).event_hub_partitions)
    chunk = 100
    positions: list[EventPosition] = []
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"sending to {hub}", total=len(lines))
        for start in range(0, len(lines), chunk):
            part = lines[start : start + chunk]
            positions += broker.publish_batch(
                hub, [EventSpec(body=b, partition_key=_partition_key(b)) for b in part]
            )
            bar.advance(task, len(part))
    return positions


def document_ids(lines: list[bytes], positions: list[EventPosition]) -> list[str]:
    """The record each sent event becomes, in order and without repeats (a re-sent
    idempotency key is the same conversation)."""
    ids = (
        event_document_id(body, event_identity(p.partition_id, p.sequence_number, p.offset))
        for body, p in zip(lines, positions, strict=True)
    )
    return list(dict.fromkeys(ids))


def _send_poison(workdir: Workdir) -> int:
    """Put one undecodable message on the intent queue: the agent parks it with its reason."""
    workdir.create()
    settings = _settings(workdir)
    queue = settings.queues.intent
    message_id = f"poison-{uuid.uuid4().hex[:8]}"
    with Broker(workdir.broker) as broker:
        if queue not in broker.queues():
            broker.ensure_queue(queue)
        body = b'{"v": 1, "stage": "intent", "conversationId": "not a valid id!"}'
        broker.send(queue, body, message_id=message_id)
    console.print(
        f"sent poison message {message_id} to queue {queue}: the intent agent cannot decode it "
        "and parks it as a dead letter with the reason.\n"
        "see it with: python -m devhost dlq list (or the dashboard's Dead letters page); "
        "send it back with: python -m devhost dlq replay --queue " + settings.queues.deadletter,
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if running_host(workdir) is None:
        console.print(f"no devhost is running in {workdir.root}: it waits until one starts")
    return 0


async def _send(workdir: Workdir, args: argparse.Namespace) -> int:
    if args.poison:
        return _send_poison(workdir)
    if args.file is None:
        console.print("[red]devhost: send needs a FILE (or - for stdin), or --poison[/red]")
        return 2
    try:
        data = _read_input(args.file)
    except OSError as exc:
        console.print(f"[red]devhost: cannot read {args.file}: {exc.strerror or exc}[/red]")
        return 2
    numbered = read_events(data, raw=args.raw, one=args.one)
    too_large = [(n, len(b)) for n, b in numbered if len(b) > EVENT_HUBS_MAX_BYTES]
    for number, size in too_large:
        console.print(
            f"[red]line {number} is {size:,} bytes; an Event Hubs event holds at most "
            f"{EVENT_HUBS_MAX_BYTES:,}: not sent[/red]"
        )
    lines = [b for _, b in numbered if len(b) <= EVENT_HUBS_MAX_BYTES]
    if not lines:
        console.print(f"[red]devhost: {args.file} has no requests to send[/red]")
        return 1
    workdir.create()
    settings = _settings(workdir)
    with Broker(workdir.broker) as broker:
        positions = publish_requests(broker, settings, lines, progress=True)
    console.print(f"sent {len(lines)} requests to {settings.eventhub_name}")
    ids = document_ids(lines, positions)
    console.print("records: " + " ".join(ids), soft_wrap=True, markup=False, highlight=False)
    host = running_host(workdir)
    if host is None:
        console.print(
            f"no devhost is running in {workdir.root}: the requests wait in the hub until one "
            "starts (python -m devhost run)"
        )
        return 1 if args.wait or too_large else 0
    if not args.wait:
        console.print("follow them with: python -m devhost conversations")
        return 1 if too_large else 0
    started = time.time()
    store = open_store(workdir, settings)
    try:
        docs = await _watch(store, settings, ids, timeout=args.timeout, title="send")
    finally:
        await store.close()
    code = _report(docs, time.time() - started, workdir)
    return code or (1 if too_large else 0)


# --------------------------------------------------------------------------- demo


async def _demo(workdir: Workdir, args: argparse.Namespace) -> int:
    demo_dir = Workdir(workdir.root / "demo")
    # The demo starts from an empty folder, cleared under the folder's host lock: a demo still
    # running there holds it, and the clearing is refused (HostError) before anything is gone.
    with WorkdirLock(demo_dir) as lock:
        lock.clear_workdir()
        return await _run_demo(demo_dir, lock, args)


async def _run_demo(demo_dir: Workdir, lock: WorkdirLock, args: argparse.Namespace) -> int:
    lines = (DATA / "demo_requests.jsonl").read_bytes().splitlines()
    requests = [json.loads(line) for line in lines]
    expected = [
        conversation_id_for(r["customerId"], r.get("idempotencyKey"), fallback="") for r in requests
    ]
    started = time.time()
    async with Host(demo_dir, simulator=_simulator(args), http_port=0, lock=lock) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        store = open_store(demo_dir, settings)
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
            records = await _watch(
                store,
                settings,
                expected,
                timeout=args.timeout,
                title="demo",
                batch_blob=f"{settings.batch_container}/{batch_target.name}",
                host=host,
            )
            base = f"http://127.0.0.1:{host.http_port}"
            ending = await desk.resolve_one(base, host.function_key, host.broker)
        finally:
            await store.close()
    elapsed = time.time() - started
    code = _report(records, elapsed, demo_dir)
    for line in ending:
        _say(line)
    return code


async def _collect(
    store: SqliteDocumentStore, settings: Settings, expected: list[str], batch_blob: str | None
) -> list[Conversation]:
    """The records of ``expected`` (a pending stand-in for each not yet written), then those of
    the conversations the batch document ``batch_blob`` started."""
    found: list[Conversation] = []
    for cid in expected:
        doc = await store.read(settings.conversations_container, cid, partition_key=cid)
        found.extend(readable([doc]) if doc else [Conversation.pending(cid, now=utcnow())])
    if batch_blob is None:
        return found
    for batch in await store.query_eq(settings.batches_container, "blobName", batch_blob):
        members = await store.query_eq(
            settings.conversations_container, "batchId", batch["batchId"]
        )
        found.extend(readable(members))
    return found


def readable(docs: list[Doc]) -> list[Conversation]:
    """The documents that are conversations of this schema; any other is named and skipped, so
    one odd record (written by another version, or by hand) never stops a listing."""
    found: list[Conversation] = []
    for doc in docs:
        try:
            found.append(Conversation.from_doc(doc))
        except ValidationError as exc:
            name = escape(str(doc.get("id", "?")))
            console.print(
                f"[yellow]record {name} is not a conversation this version reads "
                f"({exc.error_count()} problems); see it with: devhost show ID[/yellow]"
            )
    return found


def _progress_table(records: list[Conversation], title: str) -> Table:
    table = Table(title=f"Switchboard {title}: progress per stage")
    for column in ("stage", "records written"):
        table.add_column(column)
    for stage in Stage:
        count = sum(1 for c in records for r in c.stages.values() if r.stage is stage)
        table.add_row(stage.value, str(count))
    statuses = Counter(c.status for c in records)
    table.add_row(
        "[bold]conversations[/bold]", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    return table


async def _watch(
    store: SqliteDocumentStore,
    settings: Settings,
    expected: list[str],
    *,
    timeout: float,
    title: str,
    batch_blob: str | None = None,
    host: Host | None = None,
) -> list[Conversation]:
    """Show live progress until every record is final (and the batch, if any, was read), or
    the host gives up."""
    deadline = time.time() + timeout
    records = await _collect(store, settings, expected, batch_blob)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task("conversations finished", total=len(records), rate="")

    def view(found: list[Conversation]) -> Group:
        done = sum(1 for c in found if c.is_final)
        elapsed = bar.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f}/s" if elapsed > 0 and done else ""
        bar.update(task, total=len(found), completed=done, rate=rate)
        return Group(_progress_table(found, title), bar)

    with Live(view(records), console=console, refresh_per_second=4) as live:
        while time.time() < deadline:
            records = await _collect(store, settings, expected, batch_blob)
            live.update(view(records))
            batch_seen = batch_blob is None or len(records) > len(expected)
            if batch_seen and all(c.is_final for c in records):
                break
            if host is not None and host.failed.is_set():
                break
            await asyncio.sleep(0.5)
    console.print()
    return records


def outcomes_table(records: list[Conversation], *, title: str) -> Table:
    """One row per conversation record: intent, outcome and why, revisions, tokens, seconds."""
    table = Table(title=title)
    for column in ("conversation", "intent", "outcome", "detail", "rev", "tokens", "cost $"):
        table.add_column(column, overflow="fold" if column == "detail" else "ellipsis")
    table.add_column("seconds")
    for conversation in records:
        seconds = conversation.seconds_to_outcome()
        total = conversation.total
        table.add_row(
            conversation.conversation_id,
            conversation.intent_label or "-",
            conversation.status,
            escape(conversation.summary()),
            str(conversation.revisions),
            str(total.prompt_tokens + total.completion_tokens),
            _usd(total.cost_usd),
            f"{seconds:.2f}" if seconds is not None else "-",
        )
    return table


def _usd(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:,.2f}"


def cost_table(records: list[Conversation]) -> Table:
    """Model calls, tokens and dollars per stage (``LLM_PRICES`` sets the dollars)."""
    table = Table(title="Cost per stage")
    for column in ("stage", "calls", "prompt tokens", "completion tokens", "cost $"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in Stage:
        usage = [r.usage for c in records for r in c.stages.values() if r.stage is stage]
        table.add_row(
            stage.value,
            str(sum(u.calls for u in usage)),
            str(sum(u.prompt_tokens for u in usage)),
            str(sum(u.completion_tokens for u in usage)),
            _usd(sum(u.cost_usd for u in usage)),
        )
    table.add_row("[bold]total[/bold]", "", "", "", _usd(sum(c.total.cost_usd for c in records)))
    return table


def _report(records: list[Conversation], elapsed: float, workdir: Workdir) -> int:
    console.print(outcomes_table(records, title="Outcomes"))
    console.print(cost_table(records))
    done = [c for c in records if c.is_final]
    latencies = sorted(s for c in done if (s := c.seconds_to_outcome()) is not None)
    counts = Counter(c.status for c in records)
    summary = Table(title="Timing summary")
    summary.add_column("measure")
    summary.add_column("value")
    summary.add_row("conversations", str(len(records)))
    summary.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    summary.add_row("wall time (s)", f"{elapsed:.1f}")
    summary.add_row("conversations/s", f"{len(done) / elapsed:.2f}")
    if latencies:
        summary.add_row("end-to-end P50 (s)", f"{statistics.median(latencies):.2f}")
        summary.add_row(
            "end-to-end P95 (s)", f"{latencies[max(0, int(len(latencies) * 0.95) - 1)]:.2f}"
        )
    tokens = sum(c.total.prompt_tokens + c.total.completion_tokens for c in records)
    calls = sum(c.total.calls for c in records)
    summary.add_row("model calls / tokens", f"{calls} / {tokens}")
    summary.add_row("cost $", _usd(sum(c.total.cost_usd for c in records)))
    summary.add_row("state", str(workdir.root))
    console.print(summary)
    pending = len(records) - len(done)
    if pending:
        console.print(f"[red]{pending} conversations did not finish; see {workdir.logs}[/red]")
        return 1
    return 0


# --------------------------------------------------------------------------- records


def _store(workdir: Workdir) -> tuple[SqliteDocumentStore, Settings] | None:
    if not workdir.store.exists():
        console.print(f"no devhost state in {workdir.root}; start it with: python -m devhost run")
        return None
    settings = _settings(workdir)
    return open_store(workdir, settings), settings


async def _latest(
    workdir: Workdir,
    limit: int,
    container: Callable[[Settings], str],
    where: tuple[str, str] | None = None,
) -> tuple[int, list[Doc]]:
    """The ``limit`` latest records of a container (with ``where``, only those matching), or
    the exit code that says why there are none to show."""
    if limit < 1:
        console.print("[red]devhost: --limit must be at least 1[/red]")
        return 2, []
    opened = _store(workdir)
    if opened is None:
        return 1, []
    store, settings = opened
    try:
        return 0, await store.latest(container(settings), limit=limit, where=where)
    finally:
        await store.close()


async def _conversations(workdir: Workdir, args: argparse.Namespace) -> int:
    where = ("status", args.status) if args.status else None
    code, docs = await _latest(workdir, args.limit, lambda s: s.conversations_container, where)
    if code:
        return code
    title = f"latest {len(docs)} conversations" + (f" ({args.status})" if args.status else "")
    console.print(outcomes_table(readable(docs), title=title))
    console.print("one in full: python -m devhost show ID")
    return 0


async def _rejections(workdir: Workdir, args: argparse.Namespace) -> int:
    where = ("reasonCode", args.code) if args.code else ("status", "rejected")
    code, docs = await _latest(workdir, args.limit, lambda s: s.conversations_container, where)
    if code:
        return code
    console.print(rejections_table(readable(docs), code=args.code))
    console.print("one in full: python -m devhost show r-…")
    return 0


def rejections_table(records: list[Conversation], *, code: str | None) -> Table:
    """Refused requests: where each came from, its reason code and reason, a safe excerpt."""
    title = f"latest {len(records)} rejections" + (f" ({code})" if code else "")
    table = Table(title=title)
    for column in ("record", "source", "code", "reason", "excerpt"):
        table.add_column(column, overflow="fold")
    for record in records:
        outcome = record.outcome
        table.add_row(
            escape(record.id),
            escape(record.source.describe() if record.source else ""),
            escape(record.reason_code or ""),
            escape((outcome.reason if outcome else None) or ""),
            escape(record.body.excerpt if record.body else ""),
        )
    return table


async def _batches(workdir: Workdir, args: argparse.Namespace) -> int:
    code, docs = await _latest(workdir, args.limit, lambda s: s.batches_container)
    if code:
        return code
    console.print(batches_table(docs))
    console.print("one in full: python -m devhost show b-…")
    return 0


def batches_table(docs: list[Doc]) -> Table:
    """Batch documents: status, counts, rejections by code, or why the whole file was refused."""
    table = Table(title=f"latest {len(docs)} batches")
    for column in ("batch", "blob", "status", "total", "accepted", "rejected", "reasons"):
        table.add_column(column, overflow="fold")
    for doc in docs:
        if doc.get("status") == "rejected":
            reasons = f"{doc.get('code', '')}: {doc.get('reason', '')}"
        else:
            by_code = doc.get("rejectedByCode") or {}
            reasons = ", ".join(f"{c} {n}" for c, n in sorted(by_code.items()))
        table.add_row(
            escape(str(doc.get("id", ""))),
            escape(str(doc.get("blobName", ""))),
            escape(str(doc.get("status", ""))),
            str(doc.get("total", 0)),
            str(doc.get("accepted", 0)),
            str(doc.get("rejected", 0)),
            escape(reasons),
        )
    return table


async def _show(workdir: Workdir, item_id: str) -> int:
    opened = _store(workdir)
    if opened is None:
        return 1
    store, settings = opened
    container = (
        settings.batches_container if item_id.startswith("b-") else settings.conversations_container
    )
    try:
        doc = await store.read(container, item_id, partition_key=item_id)
    except InvalidInput as exc:
        console.print(f"[red]devhost: {exc}[/red]")
        return 2
    finally:
        await store.close()
    if doc is None:
        console.print(f"[red]devhost: no record {item_id!r} in {workdir.root}[/red]")
        return 1
    console.print_json(data={k: v for k, v in doc.items() if not k.startswith("_")})
    return 0


# --------------------------------------------------------------------------- status and dlq


def _status_table(workdir: Workdir) -> Table:
    """Per queue and hub: counts from the broker, and the function that drains it with its
    instances (running / ceiling), what bound its last scaling decision, and its quota cap."""
    table = Table(title=f"devhost status ({workdir.root})")
    columns = ("queue / hub", "backlog", "scheduled", "in flight", "dead-lettered", "function")
    for column in (*columns, "instances / ceiling", "bound by", "quota cap (s, tokens)"):
        table.add_column(column)
    host = running_host(workdir)
    state: dict[str, Any] = host.get("functions", {}) if host else {}
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
            quota += f" ({seconds:.2f}, {tokens})"
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


STATUS_LEGEND = """\
columns:
  backlog        messages waiting to be received (Service Bus's active count)
  scheduled      messages re-sent for later: a throttled model, an open breaker, a retry
  in flight      messages locked by a running invocation
  dead-lettered  messages the broker gave up on after maxDeliveryCount deliveries
                 (messages the pipeline parks on purpose wait on the deadletter queue)
  instances / ceiling
                 worker processes now / the most the scaler may start (scale.json's
                 maximum, the hub's partitions, or the quota cap, whichever is least)
  bound by       what limited the scaler's last decision
  quota cap N (s, t)
                 at most N instances of this agent fit its deployment's tokens per minute
                 (its share, when agents share one): each instance runs up to 16 calls at
                 once, and an invocation was measured to take s seconds and t tokens
"""


def _status(workdir: Workdir) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}; start it with: python -m devhost run")
        return 1
    host = running_host(workdir)
    if host is None:
        console.print(f"devhost is not running in {workdir.root}; the counts are what it left")
    else:
        console.print(f"devhost is running: pid {host.get('pid')}, HTTP {host.get('http')}")
    console.print(_status_table(workdir))
    _print_quota(host)
    console.print(STATUS_LEGEND, markup=False, highlight=False)
    return 0


def _print_quota(host: dict[str, Any] | None) -> None:
    """Per deployment, what the workers' limiters learned and how full its window is."""
    lines = quota_lines(host)
    if lines:
        console.print("quota (per deployment, summed over its instances):")
        for line in lines:
            console.print("  " + line, markup=False, highlight=False, soft_wrap=True)


def _dashboard(workdir: Workdir, *, open_it: bool) -> int:
    """Print the running host's dashboard address (with the key, traded for a cookie on first
    use) and open it in a browser where there is a display."""
    host = running_host(workdir)
    if host is None:
        console.print(
            f"devhost is not running in {workdir.root}; start it with: python -m devhost run"
        )
        return 1
    url = dashboard_url(str(host.get("http", "")), function_key(workdir.root))
    console.print(url, markup=False, highlight=False, soft_wrap=True)
    display = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if open_it and display and sys.stdout.isatty():
        webbrowser.open(url)
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
                replayed += broker.replay_parked(parking, original_ids=args.ids)
            else:
                replayed += broker.replay_deadletters(queue, message_ids=args.ids)
        console.print(f"replayed {replayed} messages")
        return 0
