"""Fixtures of the tests that run stages over a real broker with the outcomes topic declared:
a hand-moved clock, the broker, and the composition root closed after each test.

A test module takes them with ``from tests.support.outcome_fixtures import *``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devhost.broker import Broker
from shared import bootstrap
from shared.config import Settings
from tests.support.broker import pipeline_broker
from tests.support.clock import FakeClock

__all__ = ["_close_services", "broker", "clock"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=time.time())


@pytest.fixture
def broker(tmp_path: Path, settings: Settings, clock: FakeClock) -> Iterator[Broker]:
    with pipeline_broker(tmp_path / "broker.sqlite3", settings, clock) as made:
        yield made


@pytest.fixture(autouse=True)
async def _close_services() -> AsyncIterator[None]:
    yield
    await bootstrap.shutdown()
