"""Fixtures shared by every suite: settings for tests and the composition root reset."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devhost.broker import Broker
from devhost.broker.publisher import BrokerWriter
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent

TEST_ENV = {
    "STORE_BACKEND": "sqlite",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "AZURE_OPENAI_API_KEY": "test-only-key",
    "MAX_REVISIONS": "2",
}


def make_settings(tmp_path: Path, **extra: str) -> Settings:
    env = {**TEST_ENV, "SQLITE_PATH": str(tmp_path / "store.sqlite3"), **extra}
    return Settings.from_env(env)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_composition_root() -> Iterator[None]:
    from shared import bootstrap

    bootstrap.configure()
    yield
    bootstrap.configure()


@pytest.fixture
async def writer(broker: Broker) -> AsyncIterator[BrokerWriter]:
    """The broker writer over the test module's own ``broker`` fixture."""
    made = BrokerWriter(broker)
    yield made
    await made.close()
