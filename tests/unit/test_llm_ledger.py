"""Sharing a deployment's quota between instances through a ledger of leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.document_quota import StoreQuotaLedger
from shared.adapters.local.quota_ledger import SqliteQuotaLedger
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.llm.ledger import QuotaLedger, ShareCoordinator, allocate_shares
from shared.llm.limiter import QuotaLimiter
from tests.support.clock import ManualClock


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5), st.floats(min_value=0, max_value=1e6), min_size=1
    ),
    st.floats(min_value=1, max_value=1e6),
)
def test_shares_always_add_up_to_the_capacity(demands: dict[str, float], capacity: float) -> None:
    shares = allocate_shares(demands, capacity)
    assert set(shares) == set(demands)
    assert sum(shares.values()) == pytest.approx(capacity, rel=1e-9)
    assert min(shares.values()) >= capacity / len(demands) * 0.1 - 1e-6


def test_equal_demand_splits_evenly() -> None:
    assert allocate_shares({"a": 9000, "b": 9000}, 10_000) == {"a": 5000, "b": 5000}


def test_a_light_instance_gets_what_it_needs_and_the_busy_one_the_rest() -> None:
    shares = allocate_shares({"light": 1000, "busy": 50_000}, 10_000)
    assert shares["light"] == pytest.approx(1000)
    assert shares["busy"] == pytest.approx(9000)


def test_an_idle_instance_keeps_a_small_floor() -> None:
    shares = allocate_shares({"idle": 0, "busy": 50_000}, 10_000)
    assert shares["idle"] == pytest.approx(500)
    assert shares["busy"] == pytest.approx(9500)


@pytest.fixture(params=["sqlite", "store"])
async def ledgers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[QuotaLedger, QuotaLedger]]:
    """Two ledgers on the same shared state, as two worker processes would hold them."""
    if request.param == "sqlite":
        a, b = SqliteQuotaLedger(tmp_path / "q.sqlite3"), SqliteQuotaLedger(tmp_path / "q.sqlite3")
        yield a, b
        await a.close()
        await b.close()
    else:
        path = str(tmp_path / "store.sqlite3")
        store_a = SqliteDocumentStore(path, partition_keys={"quota": "/id"})
        store_b = SqliteDocumentStore(path, partition_keys={"quota": "/id"})
        yield StoreQuotaLedger(store_a), StoreQuotaLedger(store_b)
        await store_a.close()
        await store_b.close()


async def test_instances_see_each_others_leases(ledgers: tuple[QuotaLedger, QuotaLedger]) -> None:
    a, b = ledgers
    await a.heartbeat("d", "i-a", 100.0, now=1000.0, ttl_s=15.0)
    seen = await b.heartbeat("d", "i-b", 200.0, now=1001.0, ttl_s=15.0)
    assert seen == {"i-a": 100.0, "i-b": 200.0}
    assert await a.heartbeat("other", "i-a", 5.0, now=1001.0, ttl_s=15.0) == {"i-a": 5.0}


async def test_an_expired_lease_is_dropped(ledgers: tuple[QuotaLedger, QuotaLedger]) -> None:
    a, b = ledgers
    await a.heartbeat("d", "i-a", 100.0, now=1000.0, ttl_s=15.0)
    assert await b.heartbeat("d", "i-b", 200.0, now=1016.0, ttl_s=15.0) == {"i-b": 200.0}


async def test_leaving_hands_the_share_back_at_once(
    ledgers: tuple[QuotaLedger, QuotaLedger],
) -> None:
    a, b = ledgers
    await a.heartbeat("d", "i-a", 100.0, now=1000.0, ttl_s=15.0)
    await a.leave("d", "i-a")
    assert await b.heartbeat("d", "i-b", 200.0, now=1001.0, ttl_s=15.0) == {"i-b": 200.0}


async def test_racing_heartbeats_lose_no_lease(ledgers: tuple[QuotaLedger, QuotaLedger]) -> None:
    a, b = ledgers
    await asyncio.gather(
        *(
            (a if i % 2 else b).heartbeat("d", f"i-{i}", float(i), now=1000.0, ttl_s=15.0)
            for i in range(12)
        )
    )
    seen = await a.heartbeat("d", "i-0", 0.0, now=1000.0, ttl_s=15.0)
    assert set(seen) == {f"i-{i}" for i in range(12)}


async def test_two_coordinators_split_a_deployment_and_the_limits_follow(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    limiters = [QuotaLimiter({"d": 60_000}), QuotaLimiter({"d": 60_000})]
    coordinators = [
        ShareCoordinator(SqliteQuotaLedger(path), limiter, instance_id=name, clock=clock)
        for limiter, name in zip(limiters, ("a", "b"), strict=True)
    ]
    try:
        for _ in range(2):  # the second round sees both leases
            for coordinator in coordinators:
                coordinator.note_demand("d", 30_000)
            clock.advance(5.0)
            for coordinator in coordinators:
                await coordinator.refresh("d")
        assert [limiter.quota("d").share for limiter in limiters] == pytest.approx([0.5, 0.5])
        # Half of 10,000 tokens per window each: a 6,000-token call must wait for a window.
        assert limiters[0].quota("d").plan(4000, clock.monotonic()) == clock.monotonic()
        limiters[0].quota("d").reserve(4000, clock.monotonic())
        assert limiters[0].quota("d").plan(2000, clock.monotonic()) > clock.monotonic() + 9
    finally:
        for coordinator in coordinators:
            await coordinator.close()


async def test_a_failing_ledger_keeps_the_previous_share() -> None:
    class BrokenLedger:
        async def heartbeat(
            self, deployment: str, instance_id: str, demand_tpm: float, *, now: float, ttl_s: float
        ) -> dict[str, float]:
            raise OSError("ledger unreachable")

        async def leave(self, deployment: str, instance_id: str) -> None:
            raise OSError("ledger unreachable")

        async def close(self) -> None:
            pass

    limiter = QuotaLimiter({"d": 60_000})
    limiter.quota("d").set_share(0.25)
    coordinator = ShareCoordinator(BrokenLedger(), limiter, instance_id="a", clock=ManualClock())
    await coordinator.refresh("d")
    assert limiter.quota("d").share == 0.25
    await coordinator.close()
