"""EventHubConsumerClient with the blob checkpoint store (on Azurite) against devhost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient

from tests.integration.amqp.conftest import HUB, HUB_PARTITIONS, Devhost
from tests.integration.servers import AzuriteBlob

GROUP = "$Default"
# Bounds reached only when a test fails.
ROUNDS = 600
ROUND_S = 0.05


async def _until(condition: Callable[[], Any]) -> None:
    for _ in range(ROUNDS):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(ROUND_S)
    raise AssertionError("the condition was not reached")


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

        async def balanced() -> bool:
            owners: dict[str, int] = {}
            for item in await store.list_ownership(devhost.namespace, HUB, GROUP):
                owners[item["owner_id"]] = owners.get(item["owner_id"], 0) + 1
            return sorted(owners.values()) == [HUB_PARTITIONS // 2, HUB_PARTITIONS // 2]

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
