"""Reschedule decisions and per-customer daily token budgets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.adapters.document_quota import StoreCustomerBudget
from shared.adapters.local.customer_budget import SqliteCustomerBudget
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import LLMSettings
from shared.errors import BudgetExceeded, CircuitOpen
from shared.llm.budget import (
    CustomerBudget,
    check_budget,
    decide_reschedule,
    total_budget_reason,
    transient_delay,
    utc_day,
)

SETTINGS = LLMSettings(total_budget_s=900.0)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_a_wait_within_the_total_budget_is_rescheduled_after_its_delay() -> None:
    now = T0 + timedelta(seconds=100)
    at = decide_reschedule(100.0, now, 30.0, SETTINGS, jitter=0.0)
    assert at == now + timedelta(seconds=30)


def test_rescheduled_messages_are_spread_so_they_do_not_return_together() -> None:
    rng = random.Random(3)
    times = {decide_reschedule(0.0, T0, 20.0, SETTINGS, rng=rng) for _ in range(20)}
    assert len(times) == 20
    assert all(
        t is not None and T0 + timedelta(seconds=20) <= t <= T0 + timedelta(seconds=22)
        for t in times
    )


def test_a_wait_past_the_total_budget_is_refused() -> None:
    assert decide_reschedule(880.0, T0, 30.0, SETTINGS, jitter=0.0) is None
    reason = total_budget_reason(880.0, 7, SETTINGS, "quota of gpt-4o-mini is booked")
    assert "880s" in reason
    assert "7 reschedule" in reason
    assert "900s" in reason


@pytest.mark.parametrize("jump", [timedelta(hours=2), timedelta(hours=-1)])
def test_a_clock_jump_neither_spends_nor_refunds_the_budget(jump: timedelta) -> None:
    # The budget is the delays given so far, not a difference of wall-clock readings: the same
    # message with the same history gets the same verdict whatever the clock says now.
    for waited, expected_ok in ((100.0, True), (880.0, False)):
        at = decide_reschedule(waited, T0 + jump, 30.0, SETTINGS, jitter=0.0)
        assert (at is not None) is expected_ok
        if at is not None:
            assert at - (T0 + jump) == timedelta(seconds=30)


def test_transient_backoff_doubles_to_a_cap_and_honours_an_open_circuit() -> None:
    plain = RuntimeError("store busy")
    assert [transient_delay(n, plain) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert transient_delay(0, CircuitOpen("gpt-4o-mini", 25.0)) == 25.0
    assert transient_delay(5, CircuitOpen("gpt-4o-mini", 0.0)) == 60.0


def test_a_negative_delay_is_a_bug() -> None:
    with pytest.raises(ValueError):
        decide_reschedule(0.0, T0, -1.0, SETTINGS)


def test_the_budget_day_is_the_utc_calendar_day() -> None:
    assert utc_day(datetime(2025, 6, 1, 23, 59, tzinfo=UTC).timestamp()) == "2025-06-01"
    assert utc_day(datetime(2025, 6, 2, 0, 0, tzinfo=UTC).timestamp()) == "2025-06-02"


@pytest.fixture(params=["store", "sqlite"])
async def budget(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CustomerBudget]:
    if request.param == "store":
        store = SqliteDocumentStore(
            str(tmp_path / "store.sqlite3"), partition_keys={"quota": "/id"}
        )
        yield StoreCustomerBudget(store, limit=1000)
        await store.close()
    else:
        sqlite_budget = SqliteCustomerBudget(tmp_path / "quota.sqlite3", limit=1000)
        yield sqlite_budget
        await sqlite_budget.close()


async def test_spend_accumulates_per_customer_and_day(budget: CustomerBudget) -> None:
    assert await budget.add("cust-1", "2025-06-01", 300) == 300
    assert await budget.add("cust-1", "2025-06-01", 200) == 500
    assert await budget.used("cust-1", "2025-06-01") == 500
    assert await budget.used("cust-1", "2025-06-02") == 0
    assert await budget.used("cust-2", "2025-06-01") == 0


async def test_concurrent_spend_is_never_lost(budget: CustomerBudget) -> None:
    await asyncio.gather(*(budget.add("cust-1", "2025-06-01", 7) for _ in range(25)))
    assert await budget.used("cust-1", "2025-06-01") == 175


async def test_a_call_that_would_pass_the_budget_is_refused_with_the_numbers(
    budget: CustomerBudget,
) -> None:
    await budget.add("cust-1", "2025-06-01", 900)
    await check_budget(budget, "cust-1", "2025-06-01", 100)
    with pytest.raises(BudgetExceeded) as caught:
        await check_budget(budget, "cust-1", "2025-06-01", 101)
    assert "900 of 1000" in caught.value.description
    assert "2025-06-01" in caught.value.description
