"""Per-customer rate limiting at ingress: the token bucket on a fake clock, shared by two
instances through one store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import Settings
from shared.domain.rate_limit import Bucket, BucketPolicy, take
from shared.service.admission import RateLimiter
from shared.service.core import Core
from tests.conftest import make_settings
from tests.support.fakes import RecordingPublisher, ScriptedModel

POLICY = BucketPolicy.per_minute(6.0, 3)  # 3 at once, then one every 10 s


def test_a_full_bucket_admits_its_burst_then_one_per_interval() -> None:
    bucket: Bucket | None = None
    verdicts = []
    for _ in range(4):
        admission = take(bucket, POLICY, 100.0)
        verdicts.append(admission.admitted)
        if admission.admitted:
            bucket = admission.bucket
    assert verdicts == [True, True, True, False]
    refused = take(bucket, POLICY, 100.0)
    assert refused.retry_after_s == pytest.approx(10.0)
    assert refused.retry_after_header == "10"
    assert not take(bucket, POLICY, 109.0).admitted
    assert take(bucket, POLICY, 110.0).admitted


def test_a_clock_that_goes_back_refills_nothing() -> None:
    drained = Bucket(tokens=0.0, at=100.0)
    assert not take(drained, POLICY, 50.0).admitted
    assert take(drained, POLICY, 50.0).bucket.at == 100.0
    assert take(drained, POLICY, 110.0).admitted


def test_the_bucket_never_holds_more_than_its_capacity() -> None:
    idle = take(Bucket(tokens=0.0, at=0.0), POLICY, 1_000_000.0)
    assert idle.bucket.tokens == pytest.approx(2.0)  # refilled to 3, one taken


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _limiter(settings: Settings, store: SqliteDocumentStore, clock: Clock) -> RateLimiter:
    core = Core.build(
        settings=settings,
        store=store,
        publisher=RecordingPublisher(),
        llm=ScriptedModel(),
        clock=clock,
    )
    return RateLimiter(core)


async def test_instances_share_one_bucket_per_customer_through_the_store(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, INGRESS_RATE_PER_MINUTE="6", INGRESS_BURST="3")
    clock = Clock()
    stores = [
        SqliteDocumentStore(
            str(tmp_path / "store.sqlite3"), partition_keys=settings.container_partition_keys
        )
        for _ in range(2)
    ]
    one, two = (_limiter(settings, store, clock) for store in stores)
    try:
        taken = [(await limiter.admit("cust-1")).admitted for limiter in (one, two, one, two)]
        assert taken == [True, True, True, False]
        assert (await one.admit("cust-2")).admitted  # another customer, another bucket
        clock.now += timedelta(seconds=10)
        assert (await two.admit("cust-1")).admitted
        refused = await one.admit("cust-1")
        assert not refused.admitted
        assert refused.retry_after_header == "10"
    finally:
        for store in stores:
            await store.close()


async def test_a_zero_rate_means_no_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, INGRESS_RATE_PER_MINUTE="0", INGRESS_BURST="1")
    store = SqliteDocumentStore(
        str(tmp_path / "s.sqlite3"), partition_keys=settings.container_partition_keys
    )
    try:
        limiter = _limiter(settings, store, Clock())
        assert all([(await limiter.admit("c")).admitted for _ in range(50)])
    finally:
        await store.close()
