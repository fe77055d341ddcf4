"""The batch path with real blobs: documents uploaded to Azurite, read back with their etags,
and handed to the ``ingest_batch`` trigger as the Functions host would; the conversations'
first messages go to the devhost broker, whose duplicate detection drops a redelivery's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import azure.functions as func
import pytest

from devhost.broker.publisher import BrokerPublisher
from shared import bootstrap
from shared.adapters.azure.blob_source import BlobSource
from shared.config import Settings
from shared.domain.messages import Envelope
from tests.support.broker import pipeline_broker
from tests.support.drive import app_functions
from tests.support.fakes import happy_model

pytestmark = pytest.mark.integration


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
    azurite_blob: object, settings: Settings, tmp_path: Path
) -> None:
    container = "batches-" + uuid.uuid4().hex[:8]
    source = BlobSource(
        azurite_blob.account_url,  # type: ignore[attr-defined]
        container,
        credential=azurite_blob.credential,  # type: ignore[attr-defined]
    )
    intent = settings.queues.intent
    with pipeline_broker(tmp_path / "b.db", settings) as broker:
        bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=happy_model())
        try:
            await source.ensure_container()
            lines = [
                {"customerId": "c1", "text": "Where is my order?", "channel": "chat"},
                {"customerId": "c2", "text": "Refund please", "channel": "email"},
                {"customerId": "c3", "text": "", "channel": "chat"},
            ]
            body = "\n".join(json.dumps(line) for line in lines).encode()
            await source.upload("day1.jsonl", body)
            await _deliver(source, container, "day1.jsonl")
            await _deliver(source, container, "day1.jsonl")  # Event Grid may deliver twice
            first_version = broker.peek(intent, limit=10)
            customers = sorted(Envelope.from_bytes(m.body).customer_id for m in first_version)
            assert customers == ["c1", "c2"]
            # The redelivery re-sent both first messages under the same ids: both dropped.
            stats = broker.queue_stats()[intent]
            assert (stats.active, stats.duplicates_total) == (2, 2)

            services = await bootstrap.get_services()
            (batch,) = await services.store.query_eq(
                settings.batches_container, "blobName", f"{container}/day1.jsonl"
            )
            assert (batch["accepted"], batch["rejected"]) == (2, 1)
            assert batch["rejections"][0]["line"] == 3

            # A new version of the blob (new etag) is a new batch.
            await source.upload(
                "day1.jsonl", body + b'\n{"customerId": "c4", "text": "Hi", "channel": "sms"}'
            )
            await _deliver(source, container, "day1.jsonl")
            batches = await services.store.query_eq(
                settings.batches_container, "blobName", f"{container}/day1.jsonl"
            )
            assert len(batches) == 2
            messages = broker.peek(intent, limit=10)
            assert len(messages) == 5
            assert len({m.message_id for m in messages}) == 5
            assert {Envelope.from_bytes(m.body).batch_id for m in messages[2:]} == {
                b["batchId"] for b in batches if b["batchId"] != batch["batchId"]
            }
            assert broker.queue_stats()[intent].duplicates_total == 2

            await source.upload("broken.csv", b"\x00\x01\x02 binary")
            await _deliver(source, container, "broken.csv")
            (broken,) = await services.store.query_eq(
                settings.batches_container, "blobName", f"{container}/broken.csv"
            )
            assert broken["status"] == "rejected"
            assert "NUL" in broken["reason"] or "UTF-8" in broken["reason"]
            assert broker.queue_stats()[intent].active == 5  # a rejected document sends nothing
        finally:
            await bootstrap.shutdown()
            await source.close()
