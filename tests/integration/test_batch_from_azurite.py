"""The batch path with real blobs: documents uploaded to Azurite, read back with their etags,
and handed to the ``ingest_batch`` trigger as the Functions host would."""

from __future__ import annotations

import json
import uuid

import azure.functions as func

from shared import bootstrap
from shared.adapters.blob_source import BlobSource
from shared.config import Settings
from tests.support.drive import app_functions
from tests.support.fakes import RecordingPublisher, happy_model


async def _deliver(source: BlobSource, container: str, name: str) -> None:
    """What the Event Grid blob trigger hands the function: the blob's content and etag."""
    (ref,) = [b for b in await source.list_blobs() if b.name == name]
    data = await source.download(name, etag=ref.etag)
    stream = func.blob.InputStream(
        data=data,
        name=f"{container}/{name}",
        length=len(data),
        blob_properties={"ETag": ref.etag},
    )
    await app_functions()["ingest_batch"](stream)


async def test_a_batch_uploaded_to_blob_storage_becomes_conversations_once_per_version(
    azurite_blob: object, settings: Settings
) -> None:
    container = "batches-" + uuid.uuid4().hex[:8]
    source = BlobSource(
        azurite_blob.account_url,  # type: ignore[attr-defined]
        container,
        credential=azurite_blob.credential,  # type: ignore[attr-defined]
    )
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    try:
        await source.ensure_container()
        lines = [
            {"customerId": "c1", "text": "Where is my order?"},
            {"customerId": "c2", "text": "Refund please", "channel": "email"},
            {"customerId": "c3", "text": ""},
        ]
        body = "\n".join(json.dumps(line) for line in lines).encode()
        await source.upload("day1.jsonl", body)
        await _deliver(source, container, "day1.jsonl")
        await _deliver(source, container, "day1.jsonl")  # Event Grid may deliver twice
        assert len(publisher.on(settings.queues.intent)) == 2

        services = await bootstrap.get_services()
        (batch,) = await services.store.query_eq(
            settings.batches_container, "blobName", f"{container}/day1.jsonl"
        )
        assert (batch["accepted"], batch["rejected"]) == (2, 1)
        assert batch["rejections"][0]["line"] == 3

        # A new version of the blob (new etag) is a new batch.
        await source.upload("day1.jsonl", body + b'\n{"customerId": "c4", "text": "Hi"}')
        await _deliver(source, container, "day1.jsonl")
        batches = await services.store.query_eq(
            settings.batches_container, "blobName", f"{container}/day1.jsonl"
        )
        assert len(batches) == 2
        assert len(publisher.on(settings.queues.intent)) == 5

        await source.upload("broken.csv", b"\x00\x01\x02 binary")
        await _deliver(source, container, "broken.csv")
        (broken,) = await services.store.query_eq(
            settings.batches_container, "blobName", f"{container}/broken.csv"
        )
        assert broken["status"] == "rejected"
        assert "NUL" in broken["reason"] or "UTF-8" in broken["reason"]
    finally:
        await bootstrap.shutdown()
        await source.close()
