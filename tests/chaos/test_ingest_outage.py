"""A store outage during ingest loses none of the acknowledged events.

The real ``ingest`` function, driven by devhost's Event Hub pump with the function's own retry
policy (unbounded, exponential backoff; only its intervals shortened so the test takes seconds),
meets a store that refuses every write for more attempts than the old bounded policy allowed
(1 + 8). Before, the pump then checkpointed past the batch and every event in it was lost with no
record; now the partition waits until the store is back, and every event gets its record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from devhost.appmodel import load_app
from devhost.broker import Broker
from devhost.broker.publisher import BrokerWriter
from devhost.environment import Workdir, app_settings
from shared import bootstrap
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import Settings
from shared.errors import TransientError
from shared.ports import Doc
from tests.support.drive import app_functions
from tests.support.fakes import RecordingPublisher, happy_model
from tests.unit.test_eventhub_retry import (
    GROUP,
    HUB,
    PARTITIONS,
    eventually,
    publish,
    pump_for,
    running,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
OLD_POLICY_ATTEMPTS = 1 + 8
OUTAGE_ATTEMPTS = 14


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker.sqlite3") as made:
        made.ensure_hub(HUB, partitions=PARTITIONS)
        yield made


@dataclass
class StoreOutage:
    """The real SQLite store, unreachable for the first ``attempts`` ingest attempts."""

    inner: SqliteDocumentStore
    attempts: int
    refused: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.refused < self.attempts:
            raise TransientError("store unreachable (HTTP 503)")

    async def create(self, container: str, doc: Doc) -> Doc:
        self._check()
        return await self.inner.create(container, doc)

    async def upsert(self, container: str, doc: Doc) -> Doc:
        self._check()
        return await self.inner.upsert(container, doc)


async def test_a_long_store_outage_during_ingest_loses_none_of_the_events(
    tmp_path: Path, settings: Settings, broker: Broker, writer: BrokerWriter
) -> None:
    # The ingest function's own policy, from the app model exactly as devhost reads it.
    model = load_app(ROOT, app_settings(Workdir(tmp_path / "dh"), simulator_url="http://x:1"))
    policy = model.by_name("ingest").retry
    assert policy is not None
    assert not policy.bounded  # max_retry_count -1: hold the partition, never skip
    fast = replace(policy, minimum_interval_s=0.01, maximum_interval_s=0.05)

    store = StoreOutage(
        SqliteDocumentStore(settings.sqlite_path, partition_keys=settings.container_partition_keys),
        attempts=OUTAGE_ATTEMPTS,
    )
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model(), store=store)
    ingest = app_functions()["ingest"]

    async def handler(events: list[Any]) -> None:
        try:
            await ingest(events)
        except TransientError:
            store.refused += 1
            raise

    bodies = [
        json.dumps(
            {"customerId": f"c-{i}", "text": f"Where is order ORD-{i}?", "channel": "chat"}
        ).encode()
        for i in range(60)
    ]
    publish(broker, 0, *bodies)  # one partition, one batch: every attempt is this batch's
    pump = pump_for(broker, writer, handler, fast, batch=100)
    try:
        async with running(pump):
            await eventually(
                lambda: all(s.backlog == 0 for s in broker.hub_stats(HUB, GROUP).values()),
                timeout=60,
            )
        assert store.refused >= OUTAGE_ATTEMPTS > OLD_POLICY_ATTEMPTS
        received = await store.inner.query_eq(
            settings.conversations_container, "status", "received", limit=1000
        )
        assert len(received) == len(bodies)  # 0 of 60 lost
        assert len({d["customerId"] for d in received}) == len(bodies)  # 0 duplicated
        assert len(publisher.on(settings.queues.intent)) == len(bodies)
        assert broker.hub_stats(HUB, GROUP)[0].checkpoint == len(bodies) - 1
    finally:
        await bootstrap.shutdown()
        await store.inner.close()
