"""Offering load to a running devhost and reading back what it did, for the benchmarks.

Requests are built on the demo texts (each unique, so the response cache never answers),
published to the hub open-loop at a fixed rate, and followed to a final status through the
store file; the conversations and the workers' hop log are then read back for the statistics.
Used by :mod:`bench.pipeline`, :mod:`bench.pickup` and :mod:`bench.contention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.broker import Broker, EventSpec
from devhost.environment import PROJECT_ROOT, Workdir, open_store
from shared.config import Settings
from shared.domain.conversation import FINAL_STATUSES, Conversation
from shared.domain.messages import conversation_id_for, utcnow

FINAL_PLACEHOLDERS = ", ".join("?" * len(FINAL_STATUSES))
POLL_S = 1.0
DEMO_REQUESTS = PROJECT_ROOT / "devhost" / "data" / "demo_requests.jsonl"
ORDER_ID = re.compile(r"ORD-\d+")


@dataclass(frozen=True)
class Posted:
    """A request as the benchmark sent it."""

    conversation_id: str
    body: bytes
    customer_id: str
    posted_at: float = 0.0


def request_texts() -> list[tuple[str, str]]:
    """(text, channel) of the demo requests: a realistic mix of intents and outcomes."""
    texts: list[tuple[str, str]] = []
    for line in DEMO_REQUESTS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            texts.append((str(item["text"]), str(item.get("channel", "chat"))))
    return texts


def make_requests(count: int, *, prefix: str, seed: int, first: int = 0) -> list[Posted]:
    """``count`` requests built on the demo texts, each made unique by its own order number
    (or ticket number), so the response cache never answers for the simulator."""
    rng = random.Random(f"{prefix}-{seed}")
    texts = request_texts()
    posted: list[Posted] = []
    for i in range(count):
        text, channel = texts[rng.randrange(len(texts))]
        number = 100_000 + first + i
        if ORDER_ID.search(text):
            text = ORDER_ID.sub(f"ORD-{number}", text)
        else:
            text = f"{text} (ticket {number})"
        customer = f"{prefix}-cust-{rng.randrange(500)}"
        key = f"{prefix}-{seed}-{i}"
        body = {"customerId": customer, "text": text, "channel": channel, "idempotencyKey": key}
        cid = conversation_id_for(customer, key, fallback="")
        posted.append(Posted(cid, json.dumps(body).encode(), customer))
    return posted


async def post_open_loop(broker: Broker, hub: str, requests: list[Posted], rate: float) -> None:
    """Publish request ``i`` at ``t0 + i / rate``; stamp each with the time it was posted.

    Requests that fell due while the previous publish ran go out together, one batch, so a
    slow publish never lowers the offered rate.
    """
    start = time.monotonic()
    i = 0
    while i < len(requests):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        last = min(len(requests), max(i + 1, math.floor((now - start) * rate) + 1))
        group = requests[i:last]
        stamp = time.time()
        specs = [EventSpec(body=p.body, partition_key=p.customer_id) for p in group]
        await asyncio.to_thread(broker.publish_batch, hub, specs)
        for offset, request in enumerate(group):
            requests[i + offset] = Posted(
                request.conversation_id, request.body, request.customer_id, stamp
            )
        i = last


def count_final(store_path: Path, container: str, ids: set[str]) -> int:
    """How many of ``ids`` are final, read straight from the devhost store file (read-only).

    A single indexed count costs the running pipeline almost nothing, unlike decoding every
    document through the store port once a second.
    """
    if not store_path.exists():
        return 0
    uri = f"file:{store_path}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            rows = conn.execute(
                "SELECT id FROM documents WHERE container = ?"
                f" AND json_extract(body, '$.status') IN ({FINAL_PLACEHOLDERS})",
                (container, *FINAL_STATUSES),
            ).fetchall()
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet, or the file is mid-creation
    return sum(1 for (item,) in rows if item in ids)


async def wait_final(
    store_path: Path, settings: Settings, requests: Sequence[Posted], deadline: float
) -> bool:
    """Poll until every request's conversation is final or the deadline passes."""
    ids = {p.conversation_id for p in requests}
    while True:
        done = await asyncio.to_thread(
            count_final, store_path, settings.conversations_container, ids
        )
        if done >= len(ids):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)


async def read_docs(
    workdir: Workdir, settings: Settings, requests: Sequence[Posted]
) -> list[Conversation]:
    """Every posted conversation through the store port; a missing one reads as pending."""
    store = open_store(workdir, settings)
    try:
        found: list[Conversation] = []
        for request in requests:
            cid = request.conversation_id
            doc = await store.read(settings.conversations_container, cid, partition_key=cid)
            found.append(
                Conversation.from_doc(doc) if doc else Conversation.pending(cid, now=utcnow())
            )
        return found
    finally:
        await store.close()


def read_hop_log(directory: Path, since: float) -> list[dict[str, Any]]:
    """The workers' hop records of messages enqueued at or after ``since``."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if float(record.get("enqueued", 0)) >= since:
                    records.append(record)
    return records
