"""The read commands of ``python -m devhost``: status, conversations, rejections, batches,
show, dlq list|replay and dashboard, each with ``--json`` (see ``devhost.readouts``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import webbrowser
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from devhost import readouts
from devhost.broker import Broker
from devhost.dashboard import dashboard_url
from devhost.environment import Workdir, app_settings, open_store, running_host
from devhost.http import function_key
from devhost.quota_status import quota_lines
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.domain.conversation import FINAL_STATUSES, Conversation
from shared.domain.request_contract import RejectionCode
from shared.errors import InvalidInput
from shared.ports import Doc

# Piped output gets room for the tables rather than the 80 columns assumed off a terminal.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def add_commands(sub: Any) -> None:
    """The read commands' parsers, on ``python -m devhost``'s subparsers."""
    status = sub.add_parser(
        "status",
        help="backlog, in flight, dead-lettered; instances per function",
        description=STATUS_LEGEND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    json_flag(status, readouts.STATUS_KEYS, readouts.ENTITY_KEYS, row_name="entities")
    status.epilog = "with --json, each of models: " + ", ".join(readouts.MODEL_KEYS)
    board = sub.add_parser("dashboard", help="print the dashboard's address (and open it)")
    board.add_argument("--no-open", action="store_true", help="print the address only")
    json_flag(board, ("url",))

    listing = sub.add_parser("conversations", help="the latest conversations and their outcomes")
    listing.add_argument("--status", choices=sorted(FINAL_STATUSES | {"received", "in_progress"}))
    listing.add_argument("--limit", type=int, default=25)
    json_flag(listing, ("conversations",), readouts.CONVERSATION_KEYS, row_name="conversations")

    refused = sub.add_parser("rejections", help="requests the contract refused, with reasons")
    refused.add_argument("--code", choices=[c.value for c in RejectionCode])
    refused.add_argument("--limit", type=int, default=25)
    json_flag(refused, ("rejections",), readouts.REJECTION_KEYS, row_name="rejections")

    batches = sub.add_parser("batches", help="batch documents with their counts and rejections")
    batches.add_argument("--limit", type=int, default=25)
    json_flag(batches, ("batches",), readouts.BATCH_KEYS, row_name="batches")

    show = sub.add_parser("show", help="one conversation or batch record, as stored")
    show.add_argument("id", help="a conversation id (c-…, r-…) or a batch id (b-…)")
    show.add_argument(
        "--json",
        action="store_true",
        help="print the record as one JSON object on stdout, exactly as stored (camelCase, "
        "the HTTP API's shape; messages go to stderr)",
    )

    dlq = sub.add_parser("dlq", help="dead-lettered messages")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--queue")
    json_flag(dlq_list, ("deadLetters",), readouts.DEAD_LETTER_KEYS, row_name="deadLetters")
    dlq_replay = dlq_sub.add_parser("replay")
    dlq_replay.add_argument("--queue")
    dlq_replay.add_argument("--id", action="append", dest="ids")


def dispatch(workdir: Workdir, args: argparse.Namespace) -> int:
    """Run the read command ``args`` names."""
    if args.command == "status":
        return status_command(workdir, as_json=args.json)
    if args.command == "dashboard":
        return dashboard_command(workdir, open_it=not args.no_open, as_json=args.json)
    if args.command == "conversations":
        return asyncio.run(conversations_command(workdir, args))
    if args.command == "show":
        return asyncio.run(show_command(workdir, args.id, as_json=args.json))
    if args.command == "rejections":
        return asyncio.run(rejections_command(workdir, args))
    if args.command == "batches":
        return asyncio.run(batches_command(workdir, args))
    return dlq_command(workdir, args)


def json_flag(
    parser: argparse.ArgumentParser,
    keys: tuple[str, ...],
    rows: tuple[str, ...] = (),
    *,
    row_name: str = "",
) -> None:
    parser.add_argument(
        "--json", action="store_true", help=readouts.json_help(keys, rows, row_name=row_name)
    )


def workdir_settings(workdir: Workdir) -> Settings:
    return load_settings(app_settings(workdir, simulator_url="http://127.0.0.1:1"))


def status_line(workdir: Workdir) -> str:
    """One line: per queue (and the hub) waiting / in flight / scheduled and its instances,
    then the dead letters (dead-lettered by the broker, or parked by the pipeline)."""
    host = running_host(workdir)
    state: dict[str, Any] = host.get("functions", {}) if host else {}
    instances = {str(i.get("source")): int(i.get("instances", 0)) for i in state.values()}
    parts = []
    dead = 0
    settings = workdir_settings(workdir)
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


# --------------------------------------------------------------------------- records


def _open(workdir: Workdir) -> tuple[SqliteDocumentStore, Settings] | None:
    if not workdir.store.exists():
        console.print(f"no devhost state in {workdir.root}; start it with: python -m devhost run")
        return None
    settings = workdir_settings(workdir)
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
    opened = _open(workdir)
    if opened is None:
        return 1, []
    store, settings = opened
    try:
        return 0, await store.latest(container(settings), limit=limit, where=where)
    finally:
        await store.close()


async def conversations_command(workdir: Workdir, args: argparse.Namespace) -> int:
    where = ("status", args.status) if args.status else None
    code, docs = await _latest(workdir, args.limit, lambda s: s.conversations_container, where)
    if code:
        return code
    if args.json:
        readouts.emit({"conversations": [readouts.conversation(c) for c in readable(docs)]})
        return 0
    title = f"latest {len(docs)} conversations" + (f" ({args.status})" if args.status else "")
    console.print(outcomes_table(readable(docs), title=title))
    console.print("one in full: python -m devhost show ID")
    return 0


async def rejections_command(workdir: Workdir, args: argparse.Namespace) -> int:
    where = ("reasonCode", args.code) if args.code else ("status", "rejected")
    code, docs = await _latest(workdir, args.limit, lambda s: s.conversations_container, where)
    if code:
        return code
    if args.json:
        readouts.emit({"rejections": [readouts.rejection(c) for c in readable(docs)]})
        return 0
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


async def batches_command(workdir: Workdir, args: argparse.Namespace) -> int:
    code, docs = await _latest(workdir, args.limit, lambda s: s.batches_container)
    if code:
        return code
    if args.json:
        readouts.emit({"batches": [readouts.batch(doc) for doc in docs]})
        return 0
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


async def show_command(workdir: Workdir, item_id: str, *, as_json: bool = False) -> int:
    opened = _open(workdir)
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
    if as_json:
        readouts.emit(readouts.stored(doc))
    else:
        console.print_json(data=readouts.stored(doc))
    return 0


# --------------------------------------------------------------------------- status and dlq


def status_table(workdir: Workdir) -> Table:
    """Per queue and hub: counts from the broker, and the function that drains it with its
    instances (running / ceiling), what bound its last scaling decision, and its quota cap."""
    table = Table(title=f"devhost status ({workdir.root})")
    columns = ("queue / hub", "backlog", "scheduled", "in flight", "dead-lettered", "function")
    for column in (*columns, "instances / ceiling", "bound by", "quota cap (s, tokens)"):
        table.add_column(column)
    if not workdir.broker.exists():
        return table
    for row in readouts.status(workdir, workdir_settings(workdir), models=False)["entities"]:
        table.add_row(*status_cells(row))
    return table


def status_cells(row: dict[str, Any]) -> list[str]:
    """One row of the status table from one entity of ``status --json``."""

    def text(value: object) -> str:
        return "-" if value is None else str(value)

    instances, quota = "-", text(row["quotaCap"])
    if row["instances"] is not None:
        instances = str(row["instances"])
        if row["ceiling"] is not None:
            instances += f" / {row['ceiling']}"
    if row["quotaCap"] is not None and row["secondsPerInvocation"] is not None:
        # What the cap was computed from: seconds and tokens per invocation.
        quota += f" ({row['secondsPerInvocation']:.2f}, {row['tokensPerInvocation']})"
    name = row["name"] + (" (hub)" if row["kind"] == "hub" else "")
    counts = (row["backlog"], row["scheduled"], row["inFlight"], row["deadLettered"])
    return [name, *map(text, counts), text(row["function"]), instances, text(row["boundBy"]), quota]


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
below the table, per deployment: the simulator's requests, answers, 429s and injected
faults (run --faults); --json prints all of it as one object
"""


def status_command(workdir: Workdir, *, as_json: bool = False) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}; start it with: python -m devhost run")
        return 1
    if as_json:
        readouts.emit(readouts.status(workdir, workdir_settings(workdir)))
        return 0
    host = running_host(workdir)
    if host is None:
        console.print(f"devhost is not running in {workdir.root}; the counts are what it left")
    else:
        console.print(f"devhost is running: pid {host.get('pid')}, HTTP {host.get('http')}")
    console.print(status_table(workdir))
    for model in readouts.model_calls(workdir, (host or {}).get("simulator")):
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(model["faults"].items()))
        console.print(
            f"model calls to {model['deployment']}: {model['requests']} requests, "
            f"{model['succeeded']} answered, {model['throttled']} 429s, "
            f"{model['faultsInjected']} faults injected" + (f" ({kinds})" if kinds else ""),
            markup=False,
            highlight=False,
        )
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


def dashboard_command(workdir: Workdir, *, open_it: bool, as_json: bool = False) -> int:
    """Print the running host's dashboard address (with the key, traded for a cookie on first
    use) and open it in a browser where there is a display."""
    host = running_host(workdir)
    if host is None:
        console.print(
            f"devhost is not running in {workdir.root}; start it with: python -m devhost run"
        )
        return 1
    url = dashboard_url(str(host.get("http", "")), function_key(workdir.root))
    if as_json:
        readouts.emit({"url": url})
        return 0
    console.print(url, markup=False, highlight=False, soft_wrap=True)
    display = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if open_it and display and sys.stdout.isatty():
        webbrowser.open(url)
    return 0


def dlq_command(workdir: Workdir, args: argparse.Namespace) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}")
        return 1
    settings = workdir_settings(workdir)
    parking = settings.queues.deadletter
    with Broker(workdir.broker) as broker:
        queues = [args.queue] if args.queue else [q for q in broker.queues()]
        if args.dlq_command == "list":
            rows = readouts.dead_letters(broker, queues, parking)
            if args.json:
                readouts.emit({"deadLetters": rows})
                return 0
            table = Table(title="dead-lettered messages")
            for column in ("queue", "message id", "reason", "description", "deliveries"):
                table.add_column(column)
            for row in rows:
                where = f"{row['originalQueue'] or '?'} (parked)" if row["parked"] else row["queue"]
                table.add_row(
                    escape(where),
                    escape(row["messageId"]),
                    escape(row["reason"]),
                    escape(row["description"][:80]),
                    str(row["deliveries"]),
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
            usd(total.cost_usd),
            f"{seconds:.2f}" if seconds is not None else "-",
        )
    return table


def usd(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:,.2f}"
