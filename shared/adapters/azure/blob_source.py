"""Batch documents in one Blob Storage container, through ``azure.storage.blob.aio``.

devhost polls an Azurite container with it (the cloud's blob trigger has no local twin), the
batch-ingest tests read documents through it, and producers upload batches with it. In Azure the
credential is the app's managed identity; against Azurite it is the emulator's development
account key. The client is made on first use and closed by ``close()``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import ContainerClient, ExponentialRetry

from shared.adapters.azure.lazy_client import LazyClient
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OversizeMessage,
    PreconditionFailed,
    TransientError,
)

logger = logging.getLogger(__name__)

MAX_BLOB_NAME_CHARS = 1024
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Storage answers these to throttling and server trouble; the SDK has retried them already."""


@dataclass(frozen=True)
class BlobRef:
    """One blob as a listing shows it; ``etag`` (quoted, as ``upload`` returns it) changes
    whenever its content does."""

    name: str
    etag: str
    size: int
    last_modified: datetime


class BlobSource:
    """Lists, reads and writes the blobs of one container."""

    def __init__(
        self,
        account_url: str,
        container: str,
        *,
        credential: Any,
        retry_total: int = 3,
        owns_credential: bool = False,
    ) -> None:
        """Describe the source; nothing connects until the first call.

        ``account_url`` is ``https://<account>.blob.core.windows.net`` in Azure or
        ``http://127.0.0.1:<port>/devstoreaccount1`` for Azurite. Failed requests are retried
        ``retry_total`` times with a short exponential back-off (the SDK's default waits 15 s
        and more between tries, too long for a poller or a function invocation).
        """
        if not account_url.startswith(("https://", "http://")):
            raise ConfigError("account_url", "must be an http(s) URL")
        if not container:
            raise ConfigError("container", "missing")
        self._account_url = account_url
        self._container_name = container
        self._credential = credential
        self._retry_total = retry_total
        self._lazy = LazyClient(
            "BlobSource", self._make_client, credential=credential, owns_credential=owns_credential
        )

    @property
    def container(self) -> str:
        return self._container_name

    async def ensure_container(self) -> None:
        """Create the container if it does not exist yet (infra creates it in Azure)."""
        client = await self._container()
        try:
            async with _mapped_errors(self._container_name):
                await client.create_container()
        except Conflict:
            return
        logger.info("created blob container %s", self._container_name)

    async def list_blobs(self, prefix: str | None = None) -> list[BlobRef]:
        """Every blob in the container (under ``prefix`` if given), in name order."""
        client = await self._container()
        refs: list[BlobRef] = []
        async with _mapped_errors(self._container_name):
            async for blob in client.list_blobs(name_starts_with=prefix):
                refs.append(
                    BlobRef(
                        name=blob.name,
                        etag=_quoted(blob.etag),
                        size=int(blob.size or 0),
                        last_modified=blob.last_modified,
                    )
                )
        return refs

    async def download(
        self, name: str, *, etag: str | None = None, max_bytes: int | None = None
    ) -> bytes:
        """The blob's content.

        ``etag`` reads exactly the version a listing saw (``PreconditionFailed`` if it changed
        since); ``max_bytes`` refuses a blob larger than the caller can handle with
        ``OversizeMessage`` before its content is transferred. ``NotFound`` if it is gone.
        """
        _check_name(name)
        client = await self._container()
        options: dict[str, Any] = {}
        if etag is not None:
            options = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        async with _mapped_errors(self._container_name):
            downloader = await client.download_blob(name, **options)
            if max_bytes is not None and downloader.size > max_bytes:
                raise OversizeMessage(
                    f"blob {name} is {downloader.size} bytes, over the {max_bytes}-byte limit"
                )
            data: bytes = await downloader.readall()
        return data

    async def upload(self, name: str, data: bytes, *, overwrite: bool = True) -> str:
        """Write ``data`` as blob ``name``; return its new etag.

        With ``overwrite=False`` an existing blob is left alone and ``Conflict`` is raised.
        """
        _check_name(name)
        if not isinstance(data, bytes | bytearray):
            raise InvalidInput("blob content must be bytes")
        client = await self._container()
        async with _mapped_errors(self._container_name):
            result = await client.get_blob_client(name).upload_blob(
                bytes(data), overwrite=overwrite
            )
        return _quoted(result["etag"])

    async def delete(self, name: str) -> None:
        """Delete blob ``name``; ``NotFound`` if it does not exist."""
        _check_name(name)
        client = await self._container()
        async with _mapped_errors(self._container_name):
            await client.delete_blob(name)

    async def close(self) -> None:
        """Close the client (and the credential if owned). Idempotent."""
        await self._lazy.close()

    async def _container(self) -> ContainerClient:
        return await self._lazy.get()

    def _make_client(self) -> ContainerClient:
        return ContainerClient(
            self._account_url,
            self._container_name,
            credential=self._credential,
            retry_policy=ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=self._retry_total
            ),
        )


def _quoted(etag: str) -> str:
    """Etags in their HTTP form: listings return them bare, response headers quoted."""
    return etag if etag.startswith('"') else f'"{etag}"'


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_BLOB_NAME_CHARS:
        raise InvalidInput(f"blob name must be 1 to {MAX_BLOB_NAME_CHARS} characters")


@asynccontextmanager
async def _mapped_errors(container: str) -> AsyncIterator[None]:
    """Translate storage errors into the pipeline's hierarchy, naming the container."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise NotFound(f"blob container {container}: not found") from exc
    except ResourceExistsError as exc:
        raise Conflict(f"blob container {container}: already exists") from exc
    except ResourceModifiedError as exc:
        raise PreconditionFailed(f"blob container {container}: the blob changed") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"blob container {container}: {exc.__class__.__name__}") from exc
    except HttpResponseError as exc:
        if exc.status_code == 412:
            raise PreconditionFailed(f"blob container {container}: the blob changed") from exc
        if exc.status_code in TRANSIENT_STATUSES:
            raise TransientError(f"blob container {container}: HTTP {exc.status_code}") from exc
        raise
