"""EventHubConsumerClient with the blob checkpoint store (on Azurite) against devhost."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient
from proton import Endpoint

from tests.integration.amqp.conftest import HUB, HUB_PARTITIONS, Devhost
from tests.integration.servers import AzuriteBlob

GROUP = "$Default"
# Bounds reached only when a test fails.
ROUNDS = 600
ROUND_S = 0.05
STEADY_ROUNDS = 20


async def _until(condition: Callable[[], Any]) -> None:
    for _ in range(ROUNDS):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(ROUND_S)
    raise AssertionError("the condition was not reached")


def _one_receiver_per_partition(devhost: Devhost) -> bool:
    """Whether every partition of the hub has exactly one live receiver on the server. Read on
    the server's thread (Proton's objects belong to it)."""
    answer: list[bool] = []
    done = threading.Event()

    def count() -> None:
        live: dict[str, int] = {}
        for path, links in devhost.server.handler.senders.items():
            lowered = path.lower()
            if lowered.startswith(f"{HUB}/consumergroups/".lower()):
                partition = lowered.rsplit("/", 1)[-1]
                open_links = [link for link in links if not link.state & Endpoint.LOCAL_CLOSED]
                live[partition] = live.get(partition, 0) + len(open_links)
        answer.append(len(live) == HUB_PARTITIONS and all(n == 1 for n in live.values()))
        done.set()

    devhost.server.call_soon(count)
    assert done.wait(timeout=30)
    return answer[0]


async def _store(azurite_blob: AzuriteBlob) -> BlobCheckpointStore:
    container = f"checkpoints-{uuid.uuid4().hex[:8]}"
    async with BlobServiceClient.from_connection_string(azurite_blob.connection_string) as blobs:
        await blobs.create_container(container)
    return BlobCheckpointStore.from_connection_string(azurite_blob.connection_string, container)


async def _send(devhost: Devhost, prefix: str) -> None:
    async with EventHubProducerClient.from_connection_string(
        devhost.connection_string, eventhub_name=HUB
    ) as producer:
        for partition in range(HUB_PARTITIONS):
            await producer.send_batch(
                [EventData(f"{prefix}-{partition}")], partition_id=str(partition)
            )


def _consumer(devhost: Devhost, store: BlobCheckpointStore) -> EventHubConsumerClient:
    return EventHubConsumerClient.from_connection_string(
        devhost.connection_string,
        GROUP,
        eventhub_name=HUB,
        checkpoint_store=store,
        load_balancing_interval=0.5,
        partition_ownership_expiration_interval=3,
    )


async def test_checkpoints_on_azurite_resume_a_new_consumer(
    devhost: Devhost, azurite_blob: AzuriteBlob
) -> None:
    """With a checkpoint store, update_checkpoint records each partition's position and a new
    consumer starts after it (https://learn.microsoft.com/azure/event-hubs/event-hubs-features#checkpointing)."""
    store = await _store(azurite_blob)
    await _send(devhost, "first")
    seen: list[str] = []

    async def on_event(context: Any, event: Any) -> None:
        await context.update_checkpoint(event)
        seen.append(event.body_as_str())  # counted once its checkpoint is stored

    async def run_until(count: int) -> None:
        client = _consumer(devhost, store)
        task = asyncio.create_task(client.receive(on_event, starting_position="-1"))
        try:
            await _until(lambda: len(seen) >= count)
        finally:
            await client.close()
            await task

    await run_until(HUB_PARTITIONS)
    checkpoints = await store.list_checkpoints(devhost.namespace, HUB, GROUP)
    assert sorted(int(c["partition_id"]) for c in checkpoints) == list(range(HUB_PARTITIONS))
    assert {c["sequence_number"] for c in checkpoints} == {0}
    await _send(devhost, "second")
    await run_until(2 * HUB_PARTITIONS)
    assert sorted(seen[:HUB_PARTITIONS]) == sorted(f"first-{p}" for p in range(HUB_PARTITIONS))
    assert sorted(seen[HUB_PARTITIONS:]) == sorted(f"second-{p}" for p in range(HUB_PARTITIONS))
    await store.close()


async def test_two_consumers_balance_the_partitions(
    devhost: Devhost, azurite_blob: AzuriteBlob
) -> None:
    """Consumers sharing a checkpoint store split the partitions between them and every event
    is processed (https://learn.microsoft.com/azure/event-hubs/event-processor-balance-partition-load)."""
    store = await _store(azurite_blob)
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def handler(name: str) -> Callable[[Any, Any], Any]:
        async def on_event(context: Any, event: Any) -> None:
            await context.update_checkpoint(event)
            seen[name].append(event.body_as_str())

        return on_event

    clients = {name: _consumer(devhost, store) for name in seen}
    tasks = [
        asyncio.create_task(client.receive(handler(name), starting_position="-1"))
        for name, client in clients.items()
    ]
    try:
        steady = [0]

        async def balanced() -> bool:
            owners: dict[str, int] = {}
            for item in await store.list_ownership(devhost.namespace, HUB, GROUP):
                owners[item["owner_id"]] = owners.get(item["owner_id"], 0) + 1
            split = sorted(owners.values()) == [HUB_PARTITIONS // 2, HUB_PARTITIONS // 2]
            # A partition is claimed in the store before its new owner's receiver attaches and
            # takes it from the old one: events sent in between go to the old owner. Send only
            # once the split has held, with one receiver per partition, for STEADY_ROUNDS.
            steady[0] = steady[0] + 1 if split and _one_receiver_per_partition(devhost) else 0
            return steady[0] >= STEADY_ROUNDS

        await _until(balanced)
        await _send(devhost, "shared")
        await _until(lambda: len(seen["a"]) + len(seen["b"]) >= HUB_PARTITIONS)
    finally:
        for client in clients.values():
            await client.close()
        await asyncio.gather(*tasks)
        await store.close()
    assert sorted(seen["a"] + seen["b"]) == sorted(f"shared-{p}" for p in range(HUB_PARTITIONS))
    assert seen["a"], "consumer a processed nothing"
    assert seen["b"], "consumer b processed nothing"
