"""The blob source against a real Azurite: list, download, upload, conditions and errors."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.adapters.azure.blob_source import BlobSource
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OversizeMessage,
    PreconditionFailed,
    TransientError,
)
from tests.integration.servers import AzuriteBlob

pytestmark = pytest.mark.integration


@pytest.fixture
async def source(azurite_blob: AzuriteBlob) -> AsyncIterator[BlobSource]:
    made = BlobSource(
        azurite_blob.account_url,
        f"batches-{uuid.uuid4().hex[:12]}",
        credential=azurite_blob.credential,
    )
    await made.ensure_container()
    try:
        yield made
    finally:
        await made.close()


async def test_uploaded_documents_are_listed_and_read_back_byte_for_byte(
    source: BlobSource,
) -> None:
    first = json.dumps([{"customerId": "c-1", "text": "héllo"}]).encode()
    second = b'{"requests": []}'
    etag_a = await source.upload("2024/batch-a.json", first)
    etag_b = await source.upload("2024/batch-b.json", second)

    listed = await source.list_blobs()

    assert [ref.name for ref in listed] == ["2024/batch-a.json", "2024/batch-b.json"]
    assert [ref.etag for ref in listed] == [etag_a, etag_b]
    assert [ref.size for ref in listed] == [len(first), len(second)]
    assert all(ref.last_modified.tzinfo is not None for ref in listed)
    assert await source.download("2024/batch-a.json") == first
    assert await source.download("2024/batch-b.json") == second


async def test_listing_by_prefix_shows_only_that_folder(source: BlobSource) -> None:
    await source.upload("inbox/one.json", b"{}")
    await source.upload("done/two.json", b"{}")

    listed = await source.list_blobs(prefix="inbox/")

    assert [ref.name for ref in listed] == ["inbox/one.json"]


async def test_an_empty_container_lists_nothing(source: BlobSource) -> None:
    assert await source.list_blobs() == []


async def test_overwriting_changes_the_etag_and_the_content(source: BlobSource) -> None:
    old = await source.upload("batch.json", b"v1")
    new = await source.upload("batch.json", b"v2")

    assert new != old
    assert await source.download("batch.json") == b"v2"


async def test_upload_without_overwrite_keeps_the_existing_blob(source: BlobSource) -> None:
    await source.upload("batch.json", b"original")

    with pytest.raises(Conflict):
        await source.upload("batch.json", b"replacement", overwrite=False)

    assert await source.download("batch.json") == b"original"


async def test_download_at_a_stale_etag_is_a_precondition_failure(source: BlobSource) -> None:
    seen = await source.upload("batch.json", b"v1")
    await source.upload("batch.json", b"v2")

    with pytest.raises(PreconditionFailed):
        await source.download("batch.json", etag=seen)


async def test_download_at_the_listed_etag_reads_that_version(source: BlobSource) -> None:
    uploaded = await source.upload("batch.json", b"v1")
    (listed,) = await source.list_blobs()

    assert listed.etag == uploaded
    assert await source.download("batch.json", etag=listed.etag) == b"v1"


async def test_a_blob_over_the_callers_limit_is_refused(source: BlobSource) -> None:
    await source.upload("big.json", b"x" * 2048)

    with pytest.raises(OversizeMessage, match="2048"):
        await source.download("big.json", max_bytes=1024)


async def test_a_missing_blob_is_not_found(source: BlobSource) -> None:
    with pytest.raises(NotFound):
        await source.download("never-uploaded.json")
    with pytest.raises(NotFound):
        await source.delete("never-uploaded.json")


async def test_a_deleted_blob_disappears_from_the_listing(source: BlobSource) -> None:
    await source.upload("a.json", b"{}")
    await source.upload("b.json", b"{}")

    await source.delete("a.json")

    assert [ref.name for ref in await source.list_blobs()] == ["b.json"]


async def test_ensure_container_is_idempotent(source: BlobSource) -> None:
    await source.upload("kept.json", b"{}")

    await source.ensure_container()

    assert [ref.name for ref in await source.list_blobs()] == ["kept.json"]


async def test_listing_a_container_that_does_not_exist_is_not_found(
    azurite_blob: AzuriteBlob,
) -> None:
    missing = BlobSource(
        azurite_blob.account_url,
        f"absent-{uuid.uuid4().hex[:8]}",
        credential=azurite_blob.credential,
    )
    try:
        with pytest.raises(NotFound):
            await missing.list_blobs()
    finally:
        await missing.close()


@pytest.mark.parametrize("name", ["", "x" * 1025])
async def test_malformed_blob_names_are_refused(source: BlobSource, name: str) -> None:
    with pytest.raises(InvalidInput):
        await source.upload(name, b"{}")


async def test_an_unreachable_account_is_a_transient_error(azurite_blob: AzuriteBlob) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = BlobSource(
        f"http://127.0.0.1:{closed_port}/devstoreaccount1",
        "batches",
        credential=azurite_blob.credential,
        retry_total=0,
    )
    try:
        with pytest.raises(TransientError):
            await unreachable.download("a.json")
    finally:
        await unreachable.close()


def test_an_account_url_that_is_not_http_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        BlobSource("127.0.0.1:10000", "batches", credential=None)


async def test_a_closed_source_refuses_further_calls(azurite_blob: AzuriteBlob) -> None:
    closed = BlobSource(azurite_blob.account_url, "batches", credential=azurite_blob.credential)
    await closed.close()

    with pytest.raises(RuntimeError, match="closed"):
        await closed.list_blobs()
