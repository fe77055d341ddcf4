"""What the Cosmos store adds to the shared contract: error mapping, laziness, settings."""

from __future__ import annotations

import socket
import uuid

import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError

from shared.adapters.azure.cosmos_store import CosmosDocumentStore, _translate
from shared.config import Settings
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OversizeMessage,
    PreconditionFailed,
    TransientError,
)
from tests.integration.servers import CosmosServer

pytestmark = pytest.mark.integration

PARTITION_KEYS = {"conversations": "/conversationId"}


def local_store(server: CosmosServer, database: str, **options: bool) -> CosmosDocumentStore:
    return CosmosDocumentStore(
        server.endpoint,
        database,
        credential=server.key,
        partition_keys=PARTITION_KEYS,
        connection_verify=False,
        **options,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (409, Conflict),
        (412, PreconditionFailed),
        (404, NotFound),
        (429, TransientError),
        (503, TransientError),
        (408, TransientError),
        (410, TransientError),
        (413, OversizeMessage),
        (400, InvalidInput),
    ],
)
def test_http_statuses_map_to_the_pipeline_errors(status: int, expected: type[Exception]) -> None:
    mapped = _translate(CosmosHttpResponseError(status_code=status, message="x"), "things")

    assert type(mapped) is expected
    assert "things" in str(mapped)


def test_an_unexpected_status_is_left_to_propagate_as_a_bug() -> None:
    assert _translate(CosmosHttpResponseError(status_code=401, message="x"), "things") is None


async def test_documents_come_back_without_cosmos_only_system_fields(
    cosmos_server: CosmosServer,
) -> None:
    store = local_store(cosmos_server, f"sys-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    try:
        created = await store.create("conversations", {"id": "a", "conversationId": "c"})
        read = await store.read("conversations", "a", partition_key="c")
    finally:
        await store.close()

    assert read is not None
    for doc in (created, read):
        assert set(doc) == {"id", "conversationId", "_etag", "_ts"}


async def test_without_create_if_missing_a_missing_database_fails_ping_with_not_found(
    cosmos_server: CosmosServer,
) -> None:
    store = local_store(cosmos_server, f"absent-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(NotFound):
            await store.ping()
    finally:
        await store.close()


async def test_an_unreachable_account_is_a_transient_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = CosmosDocumentStore(
        f"https://127.0.0.1:{closed_port}/",
        "db",
        credential="a2V5",
        partition_keys=PARTITION_KEYS,
        connection_verify=False,
    )
    try:
        with pytest.raises(TransientError):
            await store.read("conversations", "a", partition_key="c")
    finally:
        await store.close()


async def test_a_closed_store_refuses_further_calls(cosmos_server: CosmosServer) -> None:
    store = local_store(cosmos_server, f"closed-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    await store.ping()
    await store.close()
    await store.close()

    with pytest.raises(RuntimeError, match="closed"):
        await store.ping()


def test_from_settings_needs_the_account_endpoint() -> None:
    with pytest.raises(ConfigError) as caught:
        CosmosDocumentStore.from_settings(Settings(store_backend="cosmos", cosmos_endpoint=None))

    assert caught.value.setting == "CosmosConnection__accountEndpoint"


async def test_from_settings_builds_a_store_that_connects_only_when_used() -> None:
    settings = Settings(
        store_backend="cosmos",
        cosmos_endpoint="https://switchboard-test.documents.azure.com:443/",
        cosmos_database="orders",
        managed_identity_client_id="00000000-0000-0000-0000-000000000001",
    )

    store = CosmosDocumentStore.from_settings(settings)
    try:
        # Every configured container is known; an unknown one is refused before any I/O.
        with pytest.raises(ConfigError):
            await store.read("unknown", "a", partition_key="p")
    finally:
        await store.close()


@pytest.mark.parametrize("path", ["conversationId", "/", "/a b", "/a//b"])
def test_a_malformed_partition_key_path_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigError):
        CosmosDocumentStore(
            "https://127.0.0.1:1/", "db", credential="a2V5", partition_keys={"c": path}
        )
