"""Dashboard benchmark: server time to render the conversations list over 10,000 conversations.

    python -m bench.dashboard [--conversations 10000] [--seeds 20] [--requests 40]

A real devhost (simulator, broker, workers) first runs ``--seeds`` requests to their outcomes;
their stored documents are then copied, with fresh ids, customers and times, until the store
holds ``--conversations`` conversations, as written by the pipeline. The dashboard is then served
(in this process, over loopback, the same aiohttp application ``devhost run`` mounts) and every
list page below is requested ``--requests`` times. Server time is measured by a middleware around
the dashboard's handler: from the request reaching the application to the response being ready
(reading the index, filtering, sorting, paging, rendering 50 rows), without the client.

Printed: the first request (which reads every document into the index), then P50 and P95 per
page, nearest-rank percentiles (``bench.stats.percentile``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.stats import percentile
from devhost.cli import publish_requests
from devhost.dashboard import ROOT, Dashboard
from devhost.environment import PROJECT_ROOT, Workdir, open_store
from devhost.host import Host, SimulatorOptions
from shared.bootstrap import load_settings
from shared.config import Settings
from shared.domain.conversation import FINAL_STATUSES

OUT = PROJECT_ROOT / "bench" / "out" / "dashboard"
KEY = "b" * 43
PAGES = (
    ("newest, page 1", "/conversations"),
    ("newest, page 100", "/conversations?page=100"),
    ("text search", "/conversations?q=refund"),
    ("escalated, by cost", "/conversations?status=escalated&sort=cost"),
    ("customer filter", "/conversations?customer=cust-77"),
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def seed(workdir: Workdir, count: int) -> tuple[list[dict[str, Any]], Settings]:
    """Run ``count`` requests through a real devhost to their outcomes; their documents."""
    async with Host(workdir, simulator=SimulatorOptions(tpm=2_000_000), http_port=0) as host:
        settings = load_settings(host.settings_env)
        lines = (PROJECT_ROOT / "devhost" / "data" / "demo_requests.jsonl").read_bytes()
        assert host.broker is not None
        publish_requests(host.broker, settings, lines.splitlines()[:count], progress=False)
        store = open_store(workdir, settings)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                docs = await store.latest(settings.conversations_container, limit=count * 2)
                if len([d for d in docs if d.get("status") in FINAL_STATUSES]) >= count:
                    return docs, settings
                await asyncio.sleep(0.5)
        finally:
            await store.close()
    raise SystemExit("the seed conversations did not finish within 300 s")


def _shift(value: Any, by: timedelta) -> Any:
    """A stored timestamp moved by ``by``, in the same ISO form; anything else as it was."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            moved = datetime.fromisoformat(value.replace("Z", "+00:00")) - by
        except ValueError:
            return value
        return moved.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _shift(v, by) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, by) for v in value]
    return value


def clone(template: dict[str, Any], n: int) -> dict[str, Any]:
    """Copy ``n`` of a stored conversation: a new id and customer, minutes earlier."""
    doc = copy.deepcopy({k: v for k, v in template.items() if not k.startswith("_")})
    doc = _shift(doc, timedelta(seconds=37 * n))
    old = str(template["id"])
    new = f"c-bench{n:07d}"
    text = json.dumps(doc).replace(old, new).replace(str(template["customerId"]), f"cust-{n}")
    cloned: dict[str, Any] = json.loads(text)
    cloned["id"] = cloned["conversationId"] = new
    return cloned


async def fill(
    workdir: Workdir, settings: Settings, seeds: list[dict[str, Any]], total: int
) -> int:
    store = open_store(workdir, settings)
    try:
        container = settings.conversations_container
        present = len(seeds)
        finals = [d for d in seeds if d.get("status") in FINAL_STATUSES]
        for n in range(total - present):
            await store.upsert(container, clone(finals[n % len(finals)], n))
        return present + max(0, total - present)
    finally:
        await store.close()


async def measure(
    workdir: Workdir, settings: Settings, requests: int
) -> tuple[float, dict[str, list[float]]]:
    timings: list[float] = []

    @web.middleware
    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        timings.append((time.perf_counter() - started) * 1000)
        return response

    dashboard = Dashboard(workdir, key=KEY, settings=settings)
    root = web.Application(middlewares=[timed])
    root.add_subapp(ROOT, dashboard.app)
    results: dict[str, list[float]] = {}
    try:
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            headers = {"x-functions-key": KEY}

            async def get(path: str) -> float:
                async with client.get(ROOT + path, headers=headers) as response:
                    body = await response.text()
                    if response.status != 200 or "<html" not in body:
                        raise SystemExit(f"{path}: HTTP {response.status}")
                return timings[-1]

            first = await get(PAGES[0][1])
            for name, path in PAGES:
                results[name] = [await get(path) for _ in range(requests)]
    finally:
        await dashboard.close()
    return first, results


async def main_async(args: argparse.Namespace) -> None:
    workdir = Workdir(Path(args.workdir))
    if workdir.root.exists():
        shutil.rmtree(workdir.root)  # the benchmark's own folder: a fresh store every run
    seeds, settings = await seed(workdir, args.seeds)
    total = await fill(workdir, settings, seeds, args.conversations)
    first, results = await measure(workdir, settings, args.requests)
    print(f"dashboard conversations list over {total:,} conversations (50 a page), server ms")
    print(f"  first request (reads every document into the index): {first:,.0f} ms")
    print(f"  {'page':<22} {'P50':>8} {'P95':>8}")
    for name, values in results.items():
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f"  {name:<22} {p50:>8.1f} {p95:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--workdir", default=str(OUT))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
