"""One contract for every DocumentStore: the SQLite store and the Cosmos store on a real server.

Each test runs twice, once per adapter, so the pipeline can rely on the same behaviour from the
store devhost uses and the one Azure uses.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.adapters.azure.cosmos_store import CosmosDocumentStore
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.errors import ConfigError, Conflict, InvalidInput, NotFound, PreconditionFailed
from shared.ports import DocumentStore
from tests.integration.servers import CosmosServer

pytestmark = pytest.mark.integration

CONVERSATIONS = "conversations"
BATCHES = "batches"
PARTITION_KEYS = {CONVERSATIONS: "/conversationId", BATCHES: "/batchId"}


@pytest.fixture(params=["sqlite", "cosmos"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    if request.param == "sqlite":
        made: DocumentStore = SqliteDocumentStore(
            str(tmp_path / "store.sqlite3"), partition_keys=PARTITION_KEYS
        )
    else:
        server: CosmosServer = request.getfixturevalue("cosmos_server")
        made = CosmosDocumentStore(
            server.endpoint,
            f"contract-{uuid.uuid4().hex[:12]}",
            credential=server.key,
            partition_keys=PARTITION_KEYS,
            connection_verify=False,
            create_if_missing=True,
        )
    try:
        yield made
    finally:
        await made.close()


def conversation(
    item_id: str, conversation_id: str = "conv-1", **fields: object
) -> dict[str, object]:
    return {"id": item_id, "conversationId": conversation_id, **fields}


async def test_a_created_document_reads_back_with_an_etag_and_a_timestamp(
    store: DocumentStore,
) -> None:
    created = await store.create(CONVERSATIONS, conversation("a", stage="intent", revision=0))
    read = await store.read(CONVERSATIONS, "a", partition_key="conv-1")

    assert read is not None
    assert read["stage"] == "intent"
    assert read["revision"] == 0
    assert read["_etag"] == created["_etag"]
    assert isinstance(read["_ts"], int)
    assert read["_ts"] > 0
    assert set(read) == {"id", "conversationId", "stage", "revision", "_etag", "_ts"}


async def test_creating_an_id_that_exists_in_the_partition_conflicts(store: DocumentStore) -> None:
    await store.create(CONVERSATIONS, conversation("a", text="first"))

    with pytest.raises(Conflict):
        await store.create(CONVERSATIONS, conversation("a", text="second"))

    kept = await store.read(CONVERSATIONS, "a", partition_key="conv-1")
    assert kept is not None
    assert kept["text"] == "first"


async def test_reading_a_missing_document_returns_none(store: DocumentStore) -> None:
    await store.create(CONVERSATIONS, conversation("present"))

    assert await store.read(CONVERSATIONS, "absent", partition_key="conv-1") is None
    assert await store.read(CONVERSATIONS, "present", partition_key="other-conv") is None


async def test_upsert_inserts_and_then_overwrites_with_a_new_etag(store: DocumentStore) -> None:
    first = await store.upsert(CONVERSATIONS, conversation("a", status="received"))
    second = await store.upsert(CONVERSATIONS, conversation("a", status="answered"))

    read = await store.read(CONVERSATIONS, "a", partition_key="conv-1")
    assert read is not None
    assert read["status"] == "answered"
    assert second["_etag"] != first["_etag"]
    assert read["_etag"] == second["_etag"]


async def test_replace_with_the_current_etag_writes_and_moves_the_etag(
    store: DocumentStore,
) -> None:
    created = await store.create(CONVERSATIONS, conversation("a", revision=0))

    replaced = await store.replace(CONVERSATIONS, {**created, "revision": 1}, etag=created["_etag"])

    read = await store.read(CONVERSATIONS, "a", partition_key="conv-1")
    assert read is not None
    assert read["revision"] == 1
    assert replaced["_etag"] != created["_etag"]
    assert read["_etag"] == replaced["_etag"]


async def test_replace_with_a_stale_etag_fails_and_keeps_the_newer_write(
    store: DocumentStore,
) -> None:
    created = await store.create(CONVERSATIONS, conversation("a", owner="nobody"))
    await store.replace(CONVERSATIONS, {**created, "owner": "first"}, etag=created["_etag"])

    with pytest.raises(PreconditionFailed):
        await store.replace(CONVERSATIONS, {**created, "owner": "second"}, etag=created["_etag"])

    read = await store.read(CONVERSATIONS, "a", partition_key="conv-1")
    assert read is not None
    assert read["owner"] == "first"


async def test_replacing_a_missing_document_raises_not_found(store: DocumentStore) -> None:
    created = await store.create(CONVERSATIONS, conversation("a"))

    with pytest.raises(NotFound):
        await store.replace(CONVERSATIONS, conversation("never-created"), etag=created["_etag"])


async def test_query_binds_the_value_so_sql_like_text_is_only_data(store: DocumentStore) -> None:
    hostile = 'x\' OR 1=1 --" ) OR c.id != "" OR (\''
    await store.create(CONVERSATIONS, conversation("plain", status="answered"))
    await store.create(CONVERSATIONS, conversation("odd", status=hostile))
    await store.create(CONVERSATIONS, conversation("quoted", status='say "hi"'))

    hostile_hits = await store.query_eq(CONVERSATIONS, "status", hostile)
    quoted_hits = await store.query_eq(CONVERSATIONS, "status", 'say "hi"')
    no_hits = await store.query_eq(CONVERSATIONS, "status", "x' OR '1'='1")

    assert [doc["id"] for doc in hostile_hits] == ["odd"]
    assert [doc["id"] for doc in quoted_hits] == ["quoted"]
    assert no_hits == []


async def test_query_compares_values_with_their_json_types(store: DocumentStore) -> None:
    await store.create(CONVERSATIONS, conversation("bool", flag=True))
    await store.create(CONVERSATIONS, conversation("int", flag=1))
    await store.create(CONVERSATIONS, conversation("str", flag="1"))
    await store.create(CONVERSATIONS, conversation("float", flag=1.0))

    assert {d["id"] for d in await store.query_eq(CONVERSATIONS, "flag", True)} == {"bool"}
    assert {d["id"] for d in await store.query_eq(CONVERSATIONS, "flag", "1")} == {"str"}
    assert {d["id"] for d in await store.query_eq(CONVERSATIONS, "flag", 1)} == {"int", "float"}


async def test_query_with_a_partition_key_sees_only_that_partition(store: DocumentStore) -> None:
    await store.create(CONVERSATIONS, conversation("a", "conv-1", customerId="c-9"))
    await store.create(CONVERSATIONS, conversation("b", "conv-2", customerId="c-9"))

    everywhere = await store.query_eq(CONVERSATIONS, "customerId", "c-9")
    one_partition = await store.query_eq(CONVERSATIONS, "customerId", "c-9", partition_key="conv-2")

    assert sorted(doc["id"] for doc in everywhere) == ["a", "b"]
    assert [doc["id"] for doc in one_partition] == ["b"]
    assert all("_etag" in doc for doc in everywhere)


async def test_query_returns_at_most_limit_documents(store: DocumentStore) -> None:
    for index in range(5):
        await store.create(BATCHES, {"id": f"item-{index}", "batchId": "b-1", "state": "done"})

    limited = await store.query_eq(BATCHES, "state", "done", partition_key="b-1", limit=3)

    assert len(limited) == 3


async def test_the_same_id_in_two_partitions_names_two_documents(store: DocumentStore) -> None:
    one = await store.create(CONVERSATIONS, conversation("shared-id", "conv-1", text="one"))
    await store.create(CONVERSATIONS, conversation("shared-id", "conv-2", text="two"))

    await store.replace(CONVERSATIONS, {**one, "text": "one, edited"}, etag=one["_etag"])

    first = await store.read(CONVERSATIONS, "shared-id", partition_key="conv-1")
    second = await store.read(CONVERSATIONS, "shared-id", partition_key="conv-2")
    assert first is not None
    assert second is not None
    assert first["text"] == "one, edited"
    assert second["text"] == "two"


async def test_containers_are_separate_namespaces(store: DocumentStore) -> None:
    await store.create(CONVERSATIONS, conversation("x", batchId="b-1"))

    assert await store.read(BATCHES, "x", partition_key="b-1") is None


async def test_system_fields_sent_by_the_caller_are_ignored(store: DocumentStore) -> None:
    written = await store.upsert(
        CONVERSATIONS, conversation("a", _etag='"made-up"', _rid="made-up", _ts=1)
    )

    read = await store.read(CONVERSATIONS, "a", partition_key="conv-1")
    assert read is not None
    assert read["_etag"] == written["_etag"]
    assert read["_etag"] != '"made-up"'
    assert "_rid" not in read
    assert "_self" not in read
    assert read["_ts"] > 1


@pytest.mark.parametrize(
    "bad_doc",
    [
        {"conversationId": "conv-1"},
        {"id": "", "conversationId": "conv-1"},
        {"id": "a/b", "conversationId": "conv-1"},
        {"id": "a"},
        {"id": "a", "conversationId": 7},
        {"id": "a", "conversationId": "conv-1", "score": math.nan},
        {"id": "a", "conversationId": "conv-1", "tags": {"x"}},
    ],
    ids=[
        "no-id",
        "empty-id",
        "slash-in-id",
        "no-partition-key",
        "numeric-partition-key",
        "nan",
        "set",
    ],
)
async def test_documents_without_a_valid_id_or_partition_key_are_refused(
    store: DocumentStore, bad_doc: dict[str, object]
) -> None:
    with pytest.raises(InvalidInput):
        await store.create(CONVERSATIONS, bad_doc)

    assert await store.query_eq(CONVERSATIONS, "conversationId", "conv-1") == []


@pytest.mark.parametrize("field_name", ["a.b", "status = 'x' OR 1", "", "1st", "c[0]"])
async def test_query_refuses_field_names_that_are_not_identifiers(
    store: DocumentStore, field_name: str
) -> None:
    with pytest.raises(InvalidInput):
        await store.query_eq(CONVERSATIONS, field_name, "x")


async def test_an_unconfigured_container_is_a_configuration_error(store: DocumentStore) -> None:
    with pytest.raises(ConfigError):
        await store.create("nope", {"id": "a", "conversationId": "conv-1"})


async def test_ping_succeeds_on_a_reachable_store(store: DocumentStore) -> None:
    await store.ping()
    created = await store.create(CONVERSATIONS, conversation("after-ping"))
    assert created["id"] == "after-ping"


async def test_changed_since_returns_what_was_written_from_that_second_on(
    store: DocumentStore,
) -> None:
    await store.create(CONVERSATIONS, conversation("a", "conv-a"))
    first = await store.read(CONVERSATIONS, "a", partition_key="conv-a")
    assert first is not None
    everything = await store.changed_since(CONVERSATIONS, 0)
    assert [d["id"] for d in everything] == ["a"]
    assert everything[0]["_etag"] == first["_etag"]
    # Nothing is written in the future: a later second finds nothing.
    assert await store.changed_since(CONVERSATIONS, int(first["_ts"]) + 3600) == []
    assert [d["id"] for d in await store.changed_since(CONVERSATIONS, int(first["_ts"]))] == ["a"]
