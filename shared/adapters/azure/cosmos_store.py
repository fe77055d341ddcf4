"""The ``DocumentStore`` on Azure Cosmos DB (NoSQL API), through ``azure.cosmos.aio``.

In Azure the client authenticates with the app's managed identity (``from_settings``); tests pass
an account key and talk to a local ``@vercel/cosmosdb-server``. The client is made on first use,
once per store, and closed by ``close()``. HTTP statuses become the pipeline's own errors so the
core never sees an SDK exception: 409 ``Conflict``, 412 ``PreconditionFailed``, 404 ``NotFound``,
and throttling, unavailability and timeouts ``TransientError`` (the SDK has already retried 429s by
then, honouring ``x-ms-retry-after-ms``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient
from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError

from shared.adapters.azure.lazy_client import LazyClient, managed_identity_credential
from shared.adapters.local.sqlite_store import (
    SYSTEM_FIELDS,
    check_field_name,
    check_item_id,
    check_limit,
    check_partition_keys,
    check_query_value,
    partition_key_value,
    user_body,
)
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OversizeMessage,
    PreconditionFailed,
    TransientError,
)
from shared.ports import Doc, PropertyValue

if TYPE_CHECKING:
    from azure.cosmos.aio import ContainerProxy, DatabaseProxy

    from shared.config import Settings

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 410, 429, 449, 503})
"""Statuses worth another try: timeout, gone (partition moved), throttled (after the SDK's own
retries), retry-with and service unavailable. Anything unexpected propagates as a bug."""

_KEPT_SYSTEM_FIELDS = frozenset({"_etag", "_ts"})
PROBE_ITEM_ID = "readiness-probe"
"""The item :meth:`CosmosDocumentStore.writable` rewrites to prove the account takes writes."""


class CosmosDocumentStore:
    """``DocumentStore`` on one Cosmos DB database; containers are named per call."""

    def __init__(
        self,
        endpoint: str,
        database: str,
        *,
        credential: Any,
        partition_keys: Mapping[str, str],
        connection_verify: bool = True,
        create_if_missing: bool = False,
        owns_credential: bool = False,
    ) -> None:
        """Describe the store; nothing connects until the first call.

        ``credential`` is an ``azure.identity.aio`` token credential in Azure, or an account key
        for a local server. ``create_if_missing`` creates the database and the containers with
        their partition keys on first use (infra creates them in Azure). ``owns_credential``
        makes ``close()`` close the credential too.
        """
        self._database_name = database
        self._partition_keys = check_partition_keys(partition_keys)
        self._create_if_missing = create_if_missing
        self._client = LazyClient(
            "CosmosDocumentStore",
            lambda: CosmosClient(
                endpoint, credential=credential, connection_verify=connection_verify
            ),
            credential=credential,
            owns_credential=owns_credential,
        )
        self._database: DatabaseProxy | None = None
        self._containers: dict[str, ContainerProxy] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> CosmosDocumentStore:
        """The production store: the app's managed identity and the names infra configured."""
        if not settings.cosmos_endpoint:
            raise ConfigError("CosmosConnection__accountEndpoint", "missing")
        return cls(
            settings.cosmos_endpoint,
            settings.cosmos_database,
            credential=managed_identity_credential(settings.managed_identity_client_id),
            partition_keys=settings.container_partition_keys,
            owns_credential=True,
        )

    # -- DocumentStore -----------------------------------------------------------------------

    async def read(self, container: str, item_id: str, *, partition_key: str) -> Doc | None:
        """Return the document, or None when it does not exist in that partition."""
        proxy = await self._container(container)
        try:
            async with _mapped_errors(container):
                item = await proxy.read_item(item_id, partition_key=partition_key)
        except NotFound:
            return None
        return _clean(item)

    async def create(self, container: str, doc: Doc) -> Doc:
        """Insert a new document; raise ``Conflict`` when the id exists in its partition."""
        body = self._prepare(container, doc)
        proxy = await self._container(container)
        async with _mapped_errors(container):
            return _clean(await proxy.create_item(body))

    async def replace(self, container: str, doc: Doc, *, etag: str) -> Doc:
        """Overwrite the document only if it is still at ``etag`` (``If-Match``)."""
        body = self._prepare(container, doc)
        proxy = await self._container(container)
        async with _mapped_errors(container):
            item = await proxy.replace_item(
                body["id"], body, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        return _clean(item)

    async def upsert(self, container: str, doc: Doc) -> Doc:
        """Insert or overwrite unconditionally."""
        body = self._prepare(container, doc)
        proxy = await self._container(container)
        async with _mapped_errors(container):
            return _clean(await proxy.upsert_item(body))

    async def query_eq(
        self,
        container: str,
        field_name: str,
        value: PropertyValue,
        *,
        partition_key: str | None = None,
        limit: int = 1000,
    ) -> list[Doc]:
        """Return up to ``limit`` documents whose top-level ``field_name`` equals ``value``.

        The field name is a validated identifier; the value is the ``@value`` parameter. With a
        partition key the query stays in one partition, otherwise it fans out.
        """
        query = f"SELECT TOP @limit * FROM c WHERE c.{check_field_name(field_name)} = @value"
        limit = check_limit(limit)
        parameters: list[dict[str, object]] = [
            {"name": "@limit", "value": limit},
            {"name": "@value", "value": check_query_value(value)},
        ]
        pk_path = self._pk_path(container)
        proxy = await self._container(container)
        results: list[Doc] = []
        async with _mapped_errors(container):
            if partition_key is None:
                pages = proxy.query_items(query, parameters=parameters, max_item_count=limit)
            else:
                # The partition key is also a filter in the query text, not only the routing
                # header: the result can never leak another partition, and emulators that
                # ignore the header on queries (cosmosdb-server) filter the same way.
                query += f" AND {_path_reference(pk_path)} = @pk"
                parameters.append({"name": "@pk", "value": partition_key})
                pages = proxy.query_items(
                    query,
                    parameters=parameters,
                    partition_key=partition_key,
                    max_item_count=limit,
                )
            async for item in pages:
                results.append(_clean(item))
                if len(results) >= limit:
                    break
        return results

    async def changed_since(self, container: str, since: int, *, limit: int = 1000) -> list[Doc]:
        """Up to ``limit`` documents whose ``_ts`` is at or after ``since``, oldest first (a
        cross-partition query)."""
        limit = check_limit(limit)
        query = "SELECT TOP @limit * FROM c WHERE c._ts >= @since ORDER BY c._ts"
        parameters: list[dict[str, object]] = [
            {"name": "@limit", "value": limit},
            {"name": "@since", "value": int(since)},
        ]
        self._pk_path(container)
        proxy = await self._container(container)
        results: list[Doc] = []
        async with _mapped_errors(container):
            async for item in proxy.query_items(query, parameters=parameters, max_item_count=limit):
                results.append(_clean(item))
                if len(results) >= limit:
                    break
        return results

    async def ping(self) -> None:
        """Read the database's properties; raises when the account or database is unreachable."""
        database = await self._db()
        async with _mapped_errors(self._database_name):
            await database.read()

    async def writable(self) -> None:
        """Upsert one small probe item (id ``readiness-probe``) into a container keyed by
        ``/id`` (the quota container), or else the first configured one; raises when the write
        does not go through."""
        container = next(
            (name for name, path in self._partition_keys.items() if path == "/id"),
            next(iter(self._partition_keys)),
        )
        doc: Doc = {"id": PROBE_ITEM_ID, "probe": True}
        pk_path = self._partition_keys[container].strip("/").split("/")
        target = doc
        for part in pk_path[:-1]:
            target = target.setdefault(part, {})
        target[pk_path[-1]] = PROBE_ITEM_ID
        await self.upsert(container, doc)

    async def close(self) -> None:
        """Close the client (and the credential when this store made it). Idempotent."""
        self._database = None
        self._containers.clear()
        await self._client.close()

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self, container: str, doc: Doc) -> Doc:
        pk_path = self._pk_path(container)
        if not isinstance(doc, Mapping):
            raise InvalidInput("document must be a JSON object")
        check_item_id(doc.get("id"))
        partition_key_value(doc, pk_path)
        body = user_body(doc)
        try:
            # The SDK would fail later with its own error (or send NaN, which is not JSON).
            json.dumps(body, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"document is not JSON-serialisable: {exc}") from None
        return body

    def _pk_path(self, container: str) -> str:
        try:
            return self._partition_keys[container]
        except KeyError:
            raise ConfigError(container, "is not a configured container") from None

    async def _db(self) -> DatabaseProxy:
        client = await self._client.get()  # raises once closed
        if self._database is not None:
            return self._database
        async with self._lock:
            if self._database is None:
                if self._create_if_missing:
                    async with _mapped_errors(self._database_name):
                        self._database = await client.create_database_if_not_exists(
                            self._database_name
                        )
                else:
                    self._database = client.get_database_client(self._database_name)
                logger.info("cosmos store ready for database %s", self._database_name)
            return self._database

    async def _container(self, name: str) -> ContainerProxy:
        pk_path = self._pk_path(name)
        proxy = self._containers.get(name)
        if proxy is not None:
            return proxy
        database = await self._db()
        async with self._lock:
            proxy = self._containers.get(name)
            if proxy is None:
                if self._create_if_missing:
                    async with _mapped_errors(name):
                        proxy = await database.create_container_if_not_exists(
                            name, partition_key=PartitionKey(path=pk_path)
                        )
                else:
                    proxy = database.get_container_client(name)
                self._containers[name] = proxy
            return proxy


def _path_reference(pk_path: str) -> str:
    """``/conversationId`` -> ``c.conversationId``, each segment checked to be an identifier."""
    return ".".join(["c", *(check_field_name(part) for part in pk_path.strip("/").split("/"))])


def _clean(item: Mapping[str, Any]) -> Doc:
    """The document as callers see it: their fields plus ``_etag`` and ``_ts``."""
    return {
        key: value
        for key, value in item.items()
        if key not in SYSTEM_FIELDS or key in _KEPT_SYSTEM_FIELDS
    }


@asynccontextmanager
async def _mapped_errors(target: str) -> AsyncIterator[None]:
    """Translate SDK errors into the pipeline's hierarchy, naming the container, never the data."""
    try:
        yield
    except CosmosHttpResponseError as exc:
        mapped = _translate(exc, target)
        if mapped is None:
            raise
        raise mapped from exc
    except (CosmosClientTimeoutError, ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"cosmos {target}: {exc.__class__.__name__}") from exc


def _translate(exc: CosmosHttpResponseError, target: str) -> Exception | None:
    status = exc.status_code
    if status == 409:
        return Conflict(f"cosmos {target}: an item with this id already exists")
    if status == 412:
        return PreconditionFailed(f"cosmos {target}: the item changed since it was read")
    if status == 404:
        return NotFound(f"cosmos {target}: not found")
    if status == 413:
        return OversizeMessage(f"cosmos {target}: the document exceeds the item size limit")
    if status == 400:
        return InvalidInput(f"cosmos {target}: the request was rejected as malformed")
    if status in TRANSIENT_STATUSES:
        return TransientError(f"cosmos {target}: HTTP {status}")
    return None
