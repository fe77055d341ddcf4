"""What ``devhost send --wait`` and ``devhost demo`` show while conversations run and when they
end: progress per stage with a bar, rate and ETA, then outcomes, cost, where the time went and
the timing summary."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter

from rich.console import Group
from rich.live import Live
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

from devhost.dashboard.data import cost_report
from devhost.environment import Workdir
from devhost.host import Host
from devhost.readcmds import console, outcomes_table, readable, usd
from devhost.time_table import percentile, time_table
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import Settings
from shared.domain.conversation import Conversation
from shared.domain.messages import Stage, utcnow


async def collect(
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


def progress_table(records: list[Conversation], title: str) -> Table:
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


async def watch(
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
    records = await collect(store, settings, expected, batch_blob)
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
        return Group(progress_table(found, title), bar)

    with Live(view(records), console=console, refresh_per_second=4) as live:
        while time.time() < deadline:
            records = await collect(store, settings, expected, batch_blob)
            live.update(view(records))
            batch_seen = batch_blob is None or len(records) > len(expected)
            if batch_seen and all(c.is_final for c in records):
                break
            if host is not None and host.failed.is_set():
                break
            await asyncio.sleep(0.5)
    console.print()
    return records


def cost_table(records: list[Conversation]) -> Table:
    """Model calls, tokens and dollars per stage (``LLM_PRICES`` sets the dollars)."""
    table = Table(title="Cost per stage")
    for column in ("stage", "calls", "prompt tokens", "completion tokens", "cost $"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for line in cost_report(records).by_stage:
        table.add_row(
            line.name,
            str(line.calls),
            str(line.prompt_tokens),
            str(line.completion_tokens),
            usd(line.cost_usd),
        )
    table.add_row("[bold]total[/bold]", "", "", "", usd(sum(c.total.cost_usd for c in records)))
    return table


def latency_rows(latencies: list[float]) -> list[tuple[str, str]]:
    """The end-to-end P50 and P95 rows of the timing summary (none without latencies); the
    P95 is the same nearest-rank one as the "where the time went" table's."""
    if not latencies:
        return []
    return [
        ("end-to-end P50 (s)", f"{statistics.median(latencies):.2f}"),
        ("end-to-end P95 (s)", f"{percentile(latencies, 0.95):.2f}"),
    ]


def report(records: list[Conversation], elapsed: float, workdir: Workdir) -> int:
    console.print(outcomes_table(records, title="Outcomes"))
    console.print(cost_table(records))
    console.print(time_table(records))
    done = [c for c in records if c.is_final]
    latencies = [s for c in done if (s := c.seconds_to_outcome()) is not None]
    counts = Counter(c.status for c in records)
    summary = Table(title="Timing summary")
    summary.add_column("measure")
    summary.add_column("value")
    summary.add_row("conversations", str(len(records)))
    summary.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    summary.add_row("wall time (s)", f"{elapsed:.1f}")
    summary.add_row("conversations/s", f"{len(done) / elapsed:.2f}")
    for measure, value in latency_rows(latencies):
        summary.add_row(measure, value)
    tokens = sum(c.total.prompt_tokens + c.total.completion_tokens for c in records)
    calls = sum(c.total.calls for c in records)
    summary.add_row("model calls / tokens", f"{calls} / {tokens}")
    summary.add_row("cost $", usd(sum(c.total.cost_usd for c in records)))
    summary.add_row("state", str(workdir.root))
    console.print(summary)
    pending = len(records) - len(done)
    if pending:
        console.print(f"[red]{pending} conversations did not finish; see {workdir.logs}[/red]")
        return 1
    return 0
