"""Session-wide real servers for the integration tests: Azurite (Blob) and cosmosdb-server.

Each starts once per test session on 127.0.0.1, on demand (only when a test asks for it), and is
stopped when the session ends, whether the tests passed or not. A server that cannot start fails
the tests that need it with the server's own output; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.servers import (
    AzuriteBlob,
    CosmosServer,
    start_azurite_blob,
    start_cosmos_server,
)


@pytest.fixture(scope="session")
def azurite_blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteBlob]:
    """A running Azurite Blob service: ``.account_url`` and ``.credential`` (the dev account)."""
    server = start_azurite_blob(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CosmosServer]:
    """A running cosmosdb-server: ``.endpoint`` (HTTPS, self-signed) and ``.key`` (random)."""
    server = start_cosmos_server(tmp_path_factory.mktemp("cosmos"))
    try:
        yield server
    finally:
        server.process.stop()
