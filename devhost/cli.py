"""The devhost command line: run, send, demo; status, conversations, rejections, batches,
show, dlq list|replay, dashboard (devhost.readcmds); escalations, outbox (devhost.desk). Every
read command takes --json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.progress import (
    Progress,
)

from devhost import desk, doctor, faults, readcmds, readouts
from devhost.amqp.server import DEFAULT_PORT as AMQP_DEFAULT_PORT
from devhost.broker import Broker, EventPosition, EventSpec
from devhost.dashboard import dashboard_url
from devhost.environment import (
    PROJECT_ROOT,
    Workdir,
    open_store,
    running_host,
)
from devhost.host import SCALE_FILE, Host, HostError, SimulatorOptions, WorkdirLock, cannot_write
from devhost.progress import report, watch
from devhost.readcmds import (
    console,
    status_line,
    status_table,
    workdir_settings,
)
from devhost.scaler import ScaleLimits
from devhost.settings import DevhostSettings, uses_external_llm
from shared.adapters.local.sqlite import storage_problem
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.domain.messages import (
    EVENT_HUBS_MAX_BYTES,
    conversation_id_for,
    event_identity,
)
from shared.domain.request_contract import customer_hint, event_document_id
from shared.errors import ConfigError

DATA = Path(__file__).parent / "data"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    workdir = Workdir(args.workdir)
    # With --json, stdout carries the JSON document alone; anything said goes to stderr.
    with _messages_to_stderr(getattr(args, "json", False)):
        try:
            return _dispatch(workdir, args)
        except (ConfigError, HostError) as exc:
            console.print(f"[red]devhost: {exc}[/red]")
            return 2
        except Exception as exc:
            # A write the file system refused (read-only workdir, full disk): one line.
            problem = storage_problem(exc, within=workdir.root)
            if problem is None:
                raise
            console.print(f"devhost: {cannot_write(workdir.root, problem)}", markup=False)
            return 2


def build_parser() -> argparse.ArgumentParser:
    """Every devhost command and its arguments."""
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT / ".devhost")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _host_commands(sub)
    readcmds.add_commands(sub)
    checkup = sub.add_parser("doctor", help="check the workdir's state files; exit 1 on problems")
    readcmds.json_flag(checkup, readouts.DOCTOR_KEYS, readouts.FILE_KEYS, row_name="files")
    reset = sub.add_parser("reset", help="move (or delete) the workdir's state files")
    reset.add_argument(
        "--keep-backup",
        action="store_true",
        help="move them to backups/<time>/ in the workdir (without it they are deleted)",
    )
    desk.add_commands(sub)
    return parser


def _host_commands(sub: Any) -> None:
    """run, send and demo: the commands that start a host or talk to a running one."""
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


@contextlib.contextmanager
def _messages_to_stderr(on: bool) -> Iterator[None]:
    consoles = (console, desk.console)
    before = [c.stderr for c in consoles]
    for c in consoles:
        c.stderr = c.stderr or on
    try:
        yield
    finally:
        for c, was in zip(consoles, before, strict=True):
            c.stderr = was


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
    if args.command == "doctor":
        if args.json:
            report = readouts.doctor(workdir)
            readouts.emit(report)
            return 1 if report["problems"] else 0
        return doctor.doctor(workdir, _say)
    if args.command == "reset":
        return doctor.reset_command(workdir, keep_backup=args.keep_backup, say=_say)
    return readcmds.dispatch(workdir, args)


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _simulator_args(parser: argparse.ArgumentParser, *, tpm: int | None = None) -> None:
    parser.add_argument("--latency-ms", type=float, help="fixed simulated latency per call")
    parser.add_argument(
        "--faults",
        type=_fault_plan,
        metavar="KIND=VALUE,...",
        help="make the simulator fail a share of model calls, to watch retries, the breaker "
        "and dead letters: an HTTP status (500=0.1, 503=0.05, 429=0.2), timeout=RATE, "
        "malformed=RATE, schema=RATE, content_filter=RATE, seed=N (repeatable draws), "
        f"timeout_s=SECONDS; rates in [0, 1] adding up to at most 1 (e.g. {faults.EXAMPLE})",
    )
    parser.add_argument(
        "--tpm",
        type=int,
        default=tpm,
        help="tokens per minute for every deployment, in the simulator and the app's limiter"
        + (f" (default {tpm})" if tpm else " (default: LLM_DEPLOYMENT_TPM)"),
    )


def _fault_plan(spec: str) -> faults.FaultPlan:
    try:
        return faults.parse_faults(spec)
    except faults.FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--faults: ")) from None


def _simulator(args: argparse.Namespace) -> SimulatorOptions | None:
    plan: faults.FaultPlan | None = args.faults
    if uses_external_llm():
        if plan is not None:
            raise HostError(
                "--faults needs devhost's simulator, and an external model endpoint is "
                "configured (OPENAI_BASE_URL / AZURE_OPENAI_ENDPOINT): unset it to inject faults"
            )
        return None
    extra = plan.simulator_args() if plan is not None else []
    if plan is not None:
        console.print(f"faults injected by the simulator: {plan.describe()}", markup=False)
    return SimulatorOptions(latency_ms=args.latency_ms, tpm=args.tpm, extra_args=extra)


# --------------------------------------------------------------------------- run


def _amqp_port(args: argparse.Namespace) -> tuple[int | None, bool]:
    """The AMQP port: the flag, else ``DEVHOST_AMQP_PORT`` (``off``: none), else 5672; and
    whether it was asked for (a port taken is then an error, not a warning)."""
    if args.amqp_port is not None:
        return int(args.amqp_port), True
    settings = DevhostSettings.from_env()
    if settings.amqp_off:
        return None, False
    if settings.amqp_port is None:
        return AMQP_DEFAULT_PORT, False
    return settings.amqp_port, True


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
        with Live(status_table(workdir), console=console, refresh_per_second=2) as live:
            while not stop.is_set() and not host.failed.is_set():  # failed: raised on exit
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    live.update(status_table(workdir))
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
    settings = workdir_settings(workdir)
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
    settings = workdir_settings(workdir)
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
        docs = await watch(store, settings, ids, timeout=args.timeout, title="send")
    finally:
        await store.close()
    code = report(docs, time.time() - started, workdir)
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
            records = await watch(
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
    code = report(records, elapsed, demo_dir)
    for line in ending:
        _say(line)
    return code
