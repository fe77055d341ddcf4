"""The one SDK client an adapter owns: made on first use, closed once.

Nothing connects at import or construction time; the first call builds the client under a lock,
and ``close`` closes it (and the credential, when the adapter was handed ownership of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


def managed_identity_credential(client_id: str | None) -> Any:
    """The app's user-assigned identity when its client id is set, else the default chain
    (a developer's ``az login`` outside Azure). Async, for the ``aio`` SDK clients."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


class _Closable(Protocol):
    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)


class LazyClient(Generic[ClientT]):
    def __init__(
        self,
        what: str,
        factory: Callable[[], ClientT],
        *,
        credential: Any,
        owns_credential: bool,
    ) -> None:
        self._what = what
        self._factory = factory
        self._credential = credential
        self._owns_credential = owns_credential
        self._client: ClientT | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def get(self) -> ClientT:
        """The client, built on the first call; ``RuntimeError`` once closed."""
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._what} is closed")
            if self._client is None:
                self._client = self._factory()
            return self._client

    async def close(self) -> None:
        """Close the client (and the credential if owned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._owns_credential and hasattr(self._credential, "close"):
            await self._credential.close()
