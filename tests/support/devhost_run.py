"""Running a real devhost (simulator, broker, worker processes) from a test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from devhost.cli import publish_requests
from devhost.environment import Workdir, open_store
from devhost.host import Host
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.ports import Doc

T = TypeVar("T")

FINAL = {"answered", "escalated", "rejected", "failed"}
STAGE_ORDER_AFTER = {
    "intent": {"response", "escalation"},
    "response": {"critic"},
    "critic": {"response", "escalation"},
    "escalation": set(),
}


async def conversations(host: Host, settings: Settings) -> list[Doc]:
    store = open_store(host.workdir, settings)
    try:
        docs: list[Doc] = []
        for status in ("received", "in_progress", *sorted(FINAL)):
            docs += await store.query_eq(
                settings.conversations_container, "status", status, limit=10_000
            )
        return docs
    finally:
        await store.close()


async def run_until_final(
    host: Host, settings: Settings, expected: int, *, timeout_s: float, on_tick: object = None
) -> list[Doc]:
    """Poll the store until ``expected`` conversations are final or the time is up."""
    deadline = time.monotonic() + timeout_s
    docs: list[Doc] = []
    while time.monotonic() < deadline:
        docs = await conversations(host, settings)
        if sum(1 for d in docs if d.get("status") in FINAL) >= expected:
            return docs
        if callable(on_tick):
            on_tick()
        await asyncio.sleep(0.5)
    return docs


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within_s: float, failing: str, every_s: float = 0.2
) -> T:
    """What ``probe`` returns once it returns something (not None), polling every ``every_s``;
    ``AssertionError(failing)`` if it has not by ``within_s``. A wait for real processes to get
    somewhere, not a bound on how fast they do."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = await probe()
        if found is not None:
            return found
        await asyncio.sleep(every_s)
    raise AssertionError(failing)


def post(host: Host, lines: Sequence[bytes]) -> Settings:
    assert host.broker is not None
    settings = load_settings(host.settings_env)
    publish_requests(host.broker, settings, list(lines), progress=False)
    return settings


def request_lines(count: int, *, prefix: str = "e2e") -> list[bytes]:
    texts = [
        "Where is my order ORD-{n}? It has not moved in days.",
        "I want a refund for order ORD-{n}, the item arrived broken.",
        "Please cancel my subscription, order ORD-{n}.",
        "My card was charged twice for ORD-{n}.",
        "The app crashes when I open my cart.",
    ]
    return [
        json.dumps(
            {
                "customerId": f"{prefix}-{i % 97}",
                "text": texts[i % len(texts)].format(n=10000 + i),
                "channel": "chat",
                "idempotencyKey": f"{prefix}-{i}",
            }
        ).encode()
        for i in range(count)
    ]


def workdir(tmp_path: Path) -> Workdir:
    # Short paths keep the broker's unix-socket doorbells inside the 108-byte limit.
    return Workdir(tmp_path / "dh")
