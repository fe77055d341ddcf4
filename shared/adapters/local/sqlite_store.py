"""A ``DocumentStore`` on one SQLite file: what devhost and the tests use in place of Cosmos DB.

Semantics follow the Cosmos DB item API the pipeline relies on: items are addressed by
(container, partition key, id); every write gives the item a fresh opaque ``_etag`` and a ``_ts``
(epoch seconds); a conditional replace fails with ``PreconditionFailed`` when the etag is stale.

Several devhost worker processes share one file, so every write is a single statement or an
``IMMEDIATE`` transaction, the journal is WAL (readers never block the writer) and
``synchronous=FULL`` makes an acknowledged write survive a power cut, not only a process crash.

The blocking sqlite3 calls run on one dedicated thread per store. They are fast, but a write can
wait up to the busy timeout for another *process* to release the write lock; doing that on the
event loop would stall every other invocation in the worker (and their message-lock renewals). A
single thread also owns the one connection, so no lock is needed around it and calls run in the
order they were made.

The helpers ``partition_key_value``, ``check_item_id``, ``check_field_name`` and
``check_query_value`` are shared with the Cosmos adapter so that both stores reject the same bad
input with the same errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shared.adapters.local.sqlite import is_busy, open_wal
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    TransientError,
)
from shared.ports import Doc, PropertyValue

logger = logging.getLogger(__name__)

SYSTEM_FIELDS = frozenset({"_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"})
"""Properties the store owns; values sent in by callers are ignored, as Cosmos DB does."""

FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_ID_CHARS = frozenset("/\\?#")
MAX_ID_LENGTH = 255
MAX_QUERY_LIMIT = 10_000
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    container TEXT NOT NULL,
    pk TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    etag TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (container, pk, id)
);
-- The latest documents and those changed since a time (the dashboard, the CLI's listings,
-- the scaler's samples) read a container by ``ts``; without this every read scans the table.
CREATE INDEX IF NOT EXISTS documents_by_time ON documents (container, ts);
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
"""
PROBE_BUSY_TIMEOUT_S = 2.0
"""How long :meth:`SqliteDocumentStore.writable` waits for another process's write lock."""

_T = TypeVar("_T")


def check_item_id(item_id: object) -> str:
    """Return ``item_id`` if Cosmos DB accepts it as an item id; else raise ``InvalidInput``."""
    if not isinstance(item_id, str) or not item_id:
        raise InvalidInput("document id must be a non-empty string")
    if len(item_id) > MAX_ID_LENGTH:
        raise InvalidInput(f"document id is longer than {MAX_ID_LENGTH} characters")
    if any(ch in _FORBIDDEN_ID_CHARS for ch in item_id):
        raise InvalidInput("document id must not contain '/', '\\', '?' or '#'")
    return item_id


def partition_key_value(doc: Mapping[str, Any], path: str) -> str:
    """Read the partition key at ``path`` (e.g. ``/conversationId``) from ``doc``.

    Every container in this app is keyed by a string, and a document without its key would land
    in Cosmos DB's "undefined" partition where no read by key finds it, so both are refused.
    """
    value: Any = doc
    for part in path.strip("/").split("/"):
        if not isinstance(value, Mapping) or part not in value:
            raise InvalidInput(f"document has no partition key at {path}")
        value = value[part]
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"partition key at {path} must be a non-empty string")
    return value


def check_partition_keys(partition_keys: Mapping[str, str]) -> dict[str, str]:
    """Validate a container -> partition key path map such as ``{"batches": "/batchId"}``."""
    if not partition_keys:
        raise ConfigError("partition_keys", "at least one container is required")
    for container, path in partition_keys.items():
        parts = path.split("/")
        if parts[0] != "" or len(parts) < 2 or not all(FIELD_NAME.match(p) for p in parts[1:]):
            raise ConfigError(container, f"partition key path {path!r} must look like /name")
    return dict(partition_keys)


def check_field_name(field_name: str) -> str:
    """Return ``field_name`` if it is a plain top-level property name, else raise ``InvalidInput``.

    Field names end up inside query text (a JSON path or a ``c.<field>`` reference), so only
    identifiers are allowed; values are always bound as parameters.
    """
    if not isinstance(field_name, str) or not FIELD_NAME.match(field_name):
        raise InvalidInput(f"field name {field_name!r} is not a plain identifier")
    return field_name


def check_query_value(value: object) -> PropertyValue:
    """Return ``value`` if it can be compared for equality in both stores, else raise."""
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise InvalidInput(f"query value must be a string, a finite number or a boolean, not {value!r}")


def check_limit(limit: int) -> int:
    """Return ``limit`` if it is a sensible page size, else raise ``InvalidInput``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
        raise InvalidInput(f"limit must be an integer in [1, {MAX_QUERY_LIMIT}]")
    return limit


def user_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's document without the store-owned system properties."""
    return {key: value for key, value in doc.items() if key not in SYSTEM_FIELDS}


def _equals(field_name: str, value: object) -> tuple[str, list[Any]]:
    """An ``AND`` clause matching a top-level field typed like Cosmos DB: ``true`` never equals
    ``1`` and ``"1"`` never equals ``1``; ``1`` equals ``1.0``. Path and value are parameters."""
    json_path = "$." + check_field_name(field_name)
    checked = check_query_value(value)
    if isinstance(checked, bool):
        return "AND json_type(body, ?) = ?", [json_path, "true" if checked else "false"]
    types = "('text')" if isinstance(checked, str) else "('integer', 'real')"
    clause = f"AND json_type(body, ?) IN {types} AND json_extract(body, ?) = ?"
    return clause, [json_path, json_path, checked]


def new_etag() -> str:
    """A fresh opaque version token, quoted the way Cosmos DB quotes its etags."""
    return f'"{uuid.uuid4().hex}"'


class SqliteDocumentStore:
    """``DocumentStore`` on a SQLite file shared by every process of one devhost."""

    def __init__(
        self,
        path: str,
        *,
        partition_keys: Mapping[str, str],
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        """Describe the store; the file is opened (and its schema made) on first use.

        ``busy_timeout_s`` bounds how long a write waits for another process's write lock
        before it fails with ``TransientError``.
        """
        if not busy_timeout_s > 0:
            raise ConfigError("busy_timeout_s", "must be positive")
        self._busy_timeout_s = busy_timeout_s
        self._path = path
        self._partition_keys = check_partition_keys(partition_keys)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- DocumentStore -----------------------------------------------------------------------

    async def read(self, container: str, item_id: str, *, partition_key: str) -> Doc | None:
        """Return the document, or None when it does not exist in that partition."""
        self._pk_path(container)

        def op(conn: sqlite3.Connection) -> Doc | None:
            row = conn.execute(
                "SELECT body, etag, ts FROM documents WHERE container = ? AND pk = ? AND id = ?",
                (container, partition_key, item_id),
            ).fetchone()
            return _to_doc(row) if row else None

        return await self._run(op)

    async def create(self, container: str, doc: Doc) -> Doc:
        """Insert a new document; raise ``Conflict`` when the id exists in its partition."""
        pk, item_id, body = self._prepare(container, doc)
        etag, ts = new_etag(), int(time.time())

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO documents (container, pk, id, body, etag, ts)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (container, pk, item_id, body, etag, ts),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"{container}: an item with this id already exists") from None

        await self._run(op)
        return _with_system(body, etag, ts)

    async def replace(self, container: str, doc: Doc, *, etag: str) -> Doc:
        """Overwrite the document only if it is still at ``etag``."""
        pk, item_id, body = self._prepare(container, doc)
        new, ts = new_etag(), int(time.time())

        def op(conn: sqlite3.Connection) -> None:
            # One IMMEDIATE transaction: the conditional update and, when it matched nothing,
            # the existence check see the same version of the row, so the error is exact.
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "UPDATE documents SET body = ?, etag = ?, ts = ?"
                    " WHERE container = ? AND pk = ? AND id = ? AND etag = ?",
                    (body, new, ts, container, pk, item_id, etag),
                )
                if cursor.rowcount == 0:
                    exists = conn.execute(
                        "SELECT 1 FROM documents WHERE container = ? AND pk = ? AND id = ?",
                        (container, pk, item_id),
                    ).fetchone()
                    if exists:
                        raise PreconditionFailed(f"{container}: the item changed since it was read")
                    raise NotFound(f"{container}: the item does not exist")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(op)
        return _with_system(body, new, ts)

    async def upsert(self, container: str, doc: Doc) -> Doc:
        """Insert or overwrite unconditionally."""
        pk, item_id, body = self._prepare(container, doc)
        etag, ts = new_etag(), int(time.time())

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO documents (container, pk, id, body, etag, ts)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (container, pk, id)"
                " DO UPDATE SET body = excluded.body, etag = excluded.etag, ts = excluded.ts",
                (container, pk, item_id, body, etag, ts),
            )

        await self._run(op)
        return _with_system(body, etag, ts)

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

        The comparison is typed like Cosmos DB's: ``true`` never equals ``1`` and ``"1"`` never
        equals ``1``; ``1`` equals ``1.0``. The value and the JSON path are bound parameters.
        """
        self._pk_path(container)
        clause, clause_params = _equals(field_name, value)
        limit = check_limit(limit)
        sql = ["SELECT body, etag, ts FROM documents WHERE container = ?"]
        params: list[Any] = [container]
        if partition_key is not None:
            sql.append("AND pk = ?")
            params.append(partition_key)
        sql.append(clause)
        params += clause_params
        sql.append("ORDER BY rowid LIMIT ?")
        params.append(limit)
        statement = " ".join(sql)

        def op(conn: sqlite3.Connection) -> list[Doc]:
            return [_to_doc(row) for row in conn.execute(statement, params)]

        return await self._run(op)

    async def latest(
        self,
        container: str,
        *,
        limit: int = 25,
        where: tuple[str, PropertyValue] | None = None,
    ) -> list[Doc]:
        """The ``limit`` most recently written documents, newest first; with ``where``, only
        those whose top-level field equals the value (typed as in :meth:`query_eq`)."""
        self._pk_path(container)
        limit = check_limit(limit)
        sql = ["SELECT body, etag, ts FROM documents WHERE container = ?"]
        params: list[Any] = [container]
        if where is not None:
            clause, clause_params = _equals(*where)
            sql.append(clause)
            params += clause_params
        sql.append("ORDER BY ts DESC, rowid DESC LIMIT ?")
        params.append(limit)
        statement = " ".join(sql)

        def op(conn: sqlite3.Connection) -> list[Doc]:
            return [_to_doc(row) for row in conn.execute(statement, params)]

        return await self._run(op)

    async def changed_since(self, container: str, since: int, *, limit: int = 1000) -> list[Doc]:
        """Up to ``limit`` documents written at or after ``since`` (epoch seconds), oldest
        first."""
        self._pk_path(container)
        limit = check_limit(limit)
        statement = (
            "SELECT body, etag, ts FROM documents WHERE container = ? AND ts >= ?"
            " ORDER BY ts, rowid LIMIT ?"
        )

        def op(conn: sqlite3.Connection) -> list[Doc]:
            return [_to_doc(row) for row in conn.execute(statement, (container, since, limit))]

        return await self._run(op)

    async def ping(self) -> None:
        """Open the file (creating the schema on first use) and run a trivial query."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def writable(self) -> None:
        """Raise unless a write reaches the file: one row of the ``probe`` table is rewritten
        (fsynced like every commit). A read-only folder, a full disk or a damaged page on the
        way raise; another process holding the write lock for more than
        ``PROBE_BUSY_TIMEOUT_S`` raises ``TransientError``."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(f"PRAGMA busy_timeout = {int(PROBE_BUSY_TIMEOUT_S * 1000)}")
            try:
                conn.execute(
                    "INSERT INTO probe (id, at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    (time.time(),),
                )
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

        await self._run(op)

    async def close(self) -> None:
        """Close the connection and stop the store's thread. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        executor = self._executor
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=True)
        self._executor = None

    # -- internals ---------------------------------------------------------------------------

    def _pk_path(self, container: str) -> str:
        try:
            return self._partition_keys[container]
        except KeyError:
            raise ConfigError(container, "is not a configured container") from None

    def _prepare(self, container: str, doc: Doc) -> tuple[str, str, str]:
        """Validate ``doc`` and return (partition key, id, JSON body without system fields)."""
        pk_path = self._pk_path(container)
        if not isinstance(doc, Mapping):
            raise InvalidInput("document must be a JSON object")
        item_id = check_item_id(doc.get("id"))
        pk = partition_key_value(doc, pk_path)
        try:
            body = json.dumps(
                user_body(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"document is not JSON-serialisable: {exc}") from None
        return pk, item_id, body

    async def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise RuntimeError("SqliteDocumentStore is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, op)

    def _call(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs on the store thread."""
        try:
            return op(self._connection())
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                logger.warning("sqlite store %s stayed locked past the busy timeout", self._path)
                raise TransientError(f"sqlite store is busy: {exc}") from exc
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_wal(self._path, busy_timeout_s=self._busy_timeout_s, schema=_SCHEMA)
            logger.debug("opened sqlite store %s", self._path)
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _to_doc(row: tuple[str, str, int]) -> Doc:
    body, etag, ts = row
    return _with_system(body, etag, ts)


def _with_system(body: str, etag: str, ts: int) -> Doc:
    doc: Doc = json.loads(body)
    doc["_etag"] = etag
    doc["_ts"] = ts
    return doc
