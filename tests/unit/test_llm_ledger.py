"""Sharing a deployment's quota between instances through a ledger of leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.document_quota import StoreQuotaLedger
from shared.adapters.local.quota_ledger import SqliteQuotaLedger
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.llm.ledger import (
    Lease,
    QuotaLedger,
    ShareCoordinator,
    allocate_lane_shares,
    allocate_shares,
)
from shared.llm.limiter import QuotaLimiter
from shared.llm.reservation import call_size
from tests.support.clock import ManualClock
from tests.support.quota import GatedLedger, slot_picker


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
    await a.heartbeat("d", "i-a", Lease(100.0), now=1000.0, ttl_s=15.0)
    seen = await b.heartbeat("d", "i-b", Lease(200.0), now=1001.0, ttl_s=15.0)
    # Each lease is read back with when its instance last renewed it.
    assert seen == {"i-a": Lease(100.0, renewed=1000.0), "i-b": Lease(200.0, renewed=1001.0)}
    assert await a.heartbeat("other", "i-a", Lease(5.0), now=1001.0, ttl_s=15.0) == {
        "i-a": Lease(5.0, renewed=1001.0)
    }


async def test_an_expired_lease_is_dropped(ledgers: tuple[QuotaLedger, QuotaLedger]) -> None:
    a, b = ledgers
    await a.heartbeat("d", "i-a", Lease(100.0), now=1000.0, ttl_s=15.0)
    assert await b.heartbeat("d", "i-b", Lease(200.0), now=1016.0, ttl_s=15.0) == {
        "i-b": Lease(200.0, renewed=1016.0)
    }


async def test_leaving_hands_the_share_back_at_once(
    ledgers: tuple[QuotaLedger, QuotaLedger],
) -> None:
    a, b = ledgers
    await a.heartbeat("d", "i-a", Lease(100.0), now=1000.0, ttl_s=15.0)
    await a.leave("d", "i-a")
    assert await b.heartbeat("d", "i-b", Lease(200.0), now=1001.0, ttl_s=15.0) == {
        "i-b": Lease(200.0, renewed=1001.0)
    }


async def test_racing_heartbeats_lose_no_lease(ledgers: tuple[QuotaLedger, QuotaLedger]) -> None:
    a, b = ledgers
    await asyncio.gather(
        *(
            (a if i % 2 else b).heartbeat("d", f"i-{i}", Lease(float(i)), now=1000.0, ttl_s=15.0)
            for i in range(12)
        )
    )
    seen = await a.heartbeat("d", "i-0", Lease(0.0), now=1000.0, ttl_s=15.0)
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
            self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
        ) -> dict[str, Lease]:
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


def test_interactive_demand_anywhere_is_served_before_batch_demand_anywhere() -> None:
    leases = {"a": Lease(batch=60_000.0), "b": Lease(interactive=30_000.0)}
    shares = allocate_lane_shares(leases, 60_000)
    # B's interactive demand in full; A's batch gets the rest, which is more than its floor.
    assert shares["b"] == pytest.approx(30_000)
    assert shares["a"] == pytest.approx(30_000)
    # Split by total demand alone, the batch instance would have taken half of B's.
    plain = allocate_shares({"a": 60_000.0, "b": 30_000.0}, 60_000)
    assert plain["b"] == pytest.approx(30_000)  # wants only 30,000, so the same here ...
    heavy = allocate_lane_shares(
        {"a": Lease(batch=60_000.0), "b": Lease(interactive=60_000.0)}, 60_000
    )
    # ... but when interactive wants everything, batch keeps its floor share (20 %) beside
    # the idle floor every instance has (a tenth of an equal share).
    assert heavy["a"] == pytest.approx(0.2 * 60_000 + 3_000)
    assert heavy["b"] == pytest.approx(60_000 - heavy["a"])


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=3),
        st.tuples(st.floats(0, 1e6), st.floats(0, 1e6)),
        min_size=1,
    ),
    st.floats(min_value=1, max_value=1e6),
)
def test_lane_shares_add_up_to_the_capacity_and_keep_every_floor(
    demands: dict[str, tuple[float, float]], capacity: float
) -> None:
    leases = {i: Lease(interactive=a, batch=b) for i, (a, b) in demands.items()}
    shares = allocate_lane_shares(leases, capacity)
    assert sum(shares.values()) == pytest.approx(capacity, rel=1e-9)
    assert min(shares.values()) >= capacity / len(demands) * 0.1 - 1e-6


def test_usage_the_headers_show_of_other_instances_is_not_reported_as_ours() -> None:
    """An instance books what the server counted beyond its own calls, so as not to plan into
    it; reporting that as its own use in the ledger would make the others shrink for their
    own traffic."""
    from shared.llm.endpoint import RateLimitInfo

    quota = QuotaLimiter({"d": 60_000}).quota("d")
    reservation = quota.reserve(1_000, 100.0)
    quota.mark_sent(reservation, 100.0)
    before = quota.used_share(100.5)
    # 10,000 per window, 1,000 ours: the server says 5,000 are left, so 4,000 are someone's.
    quota.observe(reservation, RateLimitInfo(5_000, 50, None), 100.5)
    assert quota.plan(6_000, 100.5) > 100.5 + 5  # planned around the foreign usage ...
    # ... not reported as ours (one request of the six a second allows is the larger share).
    assert quota.used_share(100.5) == before == pytest.approx(1 / 6)


WAIT_BUDGET_S = 10.0


async def test_an_instance_whose_calls_queue_gets_the_share_an_idle_one_leaves(
    tmp_path: Path,
) -> None:
    """Three instances share 60,000 TPM (10,000 tokens per 10 s). Two run four invocations
    each, back to back: an invocation asks for a 500-token call, waits for the slot its share
    allows (within a wait budget, else it tries again a second later, as a guarded call is
    retried) and the call takes a second. The third makes one call every 5 s (6,000 TPM).

    What an invocation asks for follows what it is given, so asked-for tokens alone would keep
    handing the light instance's unused share back out evenly, a third of it to itself; with
    the calls waiting for a slot counted as demand, the busy two take what it does not use."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    names = ("busy-1", "busy-2", "light")
    limiters = {name: QuotaLimiter({"d": 60_000}) for name in names}
    coordinators = {
        name: ShareCoordinator(SqliteQuotaLedger(path), limiter, instance_id=name, clock=clock)
        for name, limiter in limiters.items()
    }
    # When each invocation is free to ask again.
    free_at = {"busy-1": [0.0] * 4, "busy-2": [0.0] * 4, "light": [0.0]}
    try:
        for _ in range(480):  # two minutes in quarter seconds
            now = clock.monotonic()
            for name in names:
                quota = limiters[name].quota("d")
                for index, free in enumerate(free_at[name]):
                    if free > now:
                        continue
                    coordinators[name].note_demand("d", 500)
                    await coordinators[name].refresh("d")
                    at = quota.plan(500, now)
                    if at - now > WAIT_BUDGET_S:
                        free_at[name][index] = now + 1.0
                        continue
                    quota.mark_sent(quota.reserve(500, at), at)
                    free_at[name][index] = at + (5.0 if name == "light" else 1.0)
            clock.advance(0.25)
        shares = {name: limiters[name].quota("d").share for name in names}
    finally:
        for coordinator in coordinators.values():
            await coordinator.close()
    assert shares["light"] < 0.2
    assert shares["busy-1"] + shares["busy-2"] > 0.8


class _BusyClock(ManualClock):
    """A manual clock on which, while a call sleeps, another instance goes on heartbeating
    (every quarter second, as its own calls would refresh its lease)."""

    def __init__(self) -> None:
        super().__init__()
        self.others: list[ShareCoordinator] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        end = self.monotonic() + max(0.0, seconds)
        while self.monotonic() < end:
            self.advance(min(0.25, end - self.monotonic()))
            for other in self.others:
                await other.refresh("d")


async def test_a_call_held_back_by_a_hand_over_waits_for_the_share_not_for_the_small_one(
    tmp_path: Path,
) -> None:
    """B joins while A's calls still fill the window: B's first share is what A has not
    charged (0.2 of 60,000 TPM), short of its split (0.5), until A's charges leave. A second
    1,500-token call does not fit 2,000 tokens per 10 s; planned at that small share it would
    wait past the 10 s budget and be sent away for as long, although the share grows within
    the budget. It waits for the share to be looked at again, and goes within the budget."""
    from shared.domain.messages import Stage

    clock = _BusyClock()
    path = tmp_path / "q.sqlite3"
    limiters = {name: QuotaLimiter({"d": 60_000}) for name in ("a", "b")}
    a, b = (
        ShareCoordinator(SqliteQuotaLedger(path), limiters[name], instance_id=name, clock=clock)
        for name in ("a", "b")
    )
    picker = slot_picker(limiters["b"], b, clock)
    try:
        await a.refresh("d")
        quota_a = limiters["a"].quota("d")
        for _ in range(8):  # A alone: 8,000 of the window's 10,000 tokens
            quota_a.mark_sent(quota_a.reserve(1_000, clock.monotonic()), clock.monotonic())
        clock.advance(5.0)
        await a.refresh("d")  # A's lease now shows its charges
        clock.advance(0.5)
        clock.others.append(a)
        start = clock.monotonic()
        first = await picker.take(Stage.INTENT, ["d"], call_size(1_500), start + 10.0, 0)
        assert limiters["b"].quota("d").share == pytest.approx(0.2, abs=0.01)
        assert first.wait_s == 0.0
        second = await picker.take(Stage.INTENT, ["d"], call_size(1_500), start + 10.0, 0)
        assert second.reservation.at <= start + 10.0
        # A has stopped asking, so B's split has grown past half since.
        assert limiters["b"].quota("d").share >= 0.5
    finally:
        await a.close()
        await b.close()


async def test_a_call_at_a_small_share_comes_back_within_a_few_windows() -> None:
    """A share that is small because others want more (not a hand-over) also plans minutes out
    at a few tokens a second; the message comes back after three windows and plans again at
    whatever share it has then. A 429's retry-after is kept in full."""
    from shared.domain.messages import Stage
    from shared.errors import RetryLater
    from shared.llm.limiter import MAX_AWAY_WINDOWS

    clock = ManualClock()
    limiter = QuotaLimiter({"d": 200_000})
    picker = slot_picker(limiter, None, clock)
    quota = limiter.quota("d")
    quota.set_share(0.01)
    now = clock.monotonic()
    for _ in range(3):
        quota.mark_sent(quota.reserve(1_000, now), now)
    assert quota.plan(1_000, now) > now + 60.0
    with pytest.raises(RetryLater) as later:
        await picker.take(Stage.CRITIC, ["d"], call_size(1_000), now + 10.0, 0)
    assert later.value.delay_s <= MAX_AWAY_WINDOWS * 10.1 + 0.2
    quota.blocked_until = now + 120.0  # a server's retry-after
    with pytest.raises(RetryLater) as told:
        await picker.take(Stage.CRITIC, ["d"], call_size(1_000), now + 10.0, 0)
    assert told.value.delay_s >= 120.0


async def test_calls_that_arrive_during_the_first_heartbeat_wait_for_its_share(
    tmp_path: Path,
) -> None:
    """B joins a deployment whose window A's calls fill. B's first call heartbeats; a second
    call that arrives meanwhile must not plan at the limiter's starting share (all of it)."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    a_limiter, b_limiter = QuotaLimiter({"d": 60_000}), QuotaLimiter({"d": 60_000})
    a = ShareCoordinator(SqliteQuotaLedger(path), a_limiter, instance_id="a", clock=clock)
    gated = GatedLedger(SqliteQuotaLedger(path))
    b = ShareCoordinator(gated, b_limiter, instance_id="b", clock=clock)
    try:
        a.note_demand("d", 60_000)
        await a.refresh("d")
        a_limiter.quota("d").reserve(9_000, clock.monotonic())
        clock.advance(5.0)
        await a.refresh("d")  # A's lease shows its charges
        first = asyncio.create_task(b.refresh("d"))
        second = asyncio.create_task(b.refresh("d"))
        await asyncio.sleep(0.01)
        assert not second.done()  # it waits for the first heartbeat ...
        gated.gate.set()
        await asyncio.gather(first, second)
        assert len(gated.written) == 1
        assert b_limiter.quota("d").share < 0.5  # ... and then plans at what B was given
    finally:
        await a.close()
        await b.close()


async def test_a_newcomers_first_calls_are_not_read_as_the_whole_deployment(
    tmp_path: Path,
) -> None:
    """A newcomer's first heartbeat comes with its first call, milliseconds after it started:
    1,000 tokens over those milliseconds would read as the deployment's whole TPM and take the
    others' splits. The first reading covers at least one heartbeat interval (5 s)."""
    clock = ManualClock()
    gated = GatedLedger(SqliteQuotaLedger(tmp_path / "q.sqlite3"), open_=True)
    coordinator = ShareCoordinator(
        gated, QuotaLimiter({"d": 60_000}), instance_id="new", clock=clock
    )
    try:
        coordinator.note_demand("d", 1_000)
        clock.advance(0.002)
        await coordinator.refresh("d")
        assert gated.written[0].interactive == pytest.approx(1_000 / 5.0 * 60.0)
    finally:
        await coordinator.close()


async def test_one_heartbeats_bunch_of_returning_calls_barely_moves_the_published_demand(
    tmp_path: Path,
) -> None:
    """Calls sent away (``RetryLater``) come back together: one second in which a busy
    instance asks for ten times its rate is not a new demand, and the split must not follow
    it (shares that swing leave room idle while the shrunk one's charges leave). A reading
    moves demand by the time it covers (``DEMAND_SMOOTHING_S``): the bunch moves it about 5 %
    of the way; a change that lasts is followed within a minute."""
    clock = ManualClock()
    gated = GatedLedger(SqliteQuotaLedger(tmp_path / "q.sqlite3"), open_=True)
    coordinator = ShareCoordinator(
        gated, QuotaLimiter({"d": 600_000}), instance_id="busy", clock=clock
    )

    async def second(tokens: int) -> float:
        coordinator.note_demand("d", tokens)
        clock.advance(1.0)
        await coordinator.refresh("d")  # alone: a heartbeat every second
        return gated.written[-1].interactive

    try:
        for _ in range(120):
            steady = await second(500)  # 30,000 TPM
        assert steady == pytest.approx(30_000, rel=0.01)
        bunch = await second(5_000)  # 300,000 TPM for one second
        assert bunch - steady <= 0.06 * (300_000 - steady)
        for _ in range(60):
            lasting = await second(250)  # 15,000 TPM from now on
        assert lasting == pytest.approx(15_000, rel=0.1)
    finally:
        await coordinator.close()


async def test_status_is_published_once_per_interval_however_often_the_heartbeats_come(
    tmp_path: Path,
) -> None:
    """Heartbeats come five times as often while shares move; the status snapshot, read only
    by a display, is written at most once per heartbeat interval."""
    clock = ManualClock()
    ledger = SqliteQuotaLedger(tmp_path / "q.sqlite3")
    published: list[float] = []

    class Counting(GatedLedger):
        """The SQLite ledger's own status board, each write counted."""

        async def publish(
            self, deployment: str, instance_id: str, snapshot: Mapping[str, Any], *, now: float
        ) -> None:
            published.append(now)
            await ledger.publish(deployment, instance_id, snapshot, now=now)

    gated = Counting(ledger, open_=True)
    coordinator = ShareCoordinator(
        gated, QuotaLimiter({"d": 60_000}), instance_id="a", clock=clock, heartbeat_s=5.0
    )
    try:
        for _ in range(10):  # 10 s alone: a heartbeat every second
            coordinator.note_demand("d", 500)
            await coordinator.refresh("d")
            clock.advance(1.0)
        assert len(gated.written) == 10
        assert len(published) == 2
    finally:
        await coordinator.close()
