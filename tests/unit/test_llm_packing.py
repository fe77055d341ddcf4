"""Size-aware admission (``shared.llm.packing`` through ``DeploymentQuota.hold``), in simulated
time: smaller calls use room a large one cannot, the large one is never starved, and a closed
loop against the simulator's Azure rate limiter packs its windows fuller than first-come."""

from __future__ import annotations

import asyncio

import pytest

from bench.packing_sim import limiter
from shared.llm.guarded import GuardedChatModel
from shared.llm.lanes import INTERACTIVE
from shared.llm.limiter import DeploymentQuota
from shared.llm.packing import MAX_YIELDS, PACK_AGE_FRACTION, WaitingRoom
from tests.support.clock import ManualClock

TPM = 60_000  # 10,000 tokens, 60 requests per 10 s and 6 per second: tokens bind
AGE_S = PACK_AGE_FRACTION * 10.0


def send(quota: DeploymentQuota, tokens: int, at: float) -> float:
    reservation = quota.reserve(tokens, at)
    quota.mark_sent(reservation, at)
    return at


def fill(quota: DeploymentQuota) -> float:
    """9,000 of the window's 10,000 tokens, sent at the paced rate (1,500 every 1.5 s from 0);
    returns 8.0, when 1,000 tokens of room are left until the first leaves at 10.1 s."""
    for i in range(6):
        send(quota, 1_500, 1.5 * i)
    return 8.0


def test_a_small_call_takes_room_a_large_one_cannot_use_and_the_large_one_ages_into_a_slot() -> (
    None
):
    quota = DeploymentQuota("d", TPM)
    t = fill(quota)
    large, small, later = object(), object(), object()

    planned = quota.plan(3_000, t)
    assert planned == pytest.approx(11.6)  # two 1,500 charges must leave first
    wake = quota.hold(large, 3_000, INTERACTIVE, planned, t)
    assert wake == pytest.approx(t + AGE_S)  # the head waits unbooked until it has aged

    at = quota.plan(1_000, t + 0.5)
    assert at == t + 0.5  # first-come, it would have queued behind the large call's slot
    assert quota.hold(small, 1_000, INTERACTIVE, at, t + 0.5) is None
    quota.unhold(small, t + 0.5)
    send(quota, 1_000, at)

    # Aged, the large call books the next slot that fits it; no later call can take it.
    t += AGE_S
    planned = quota.plan(3_000, t)
    assert planned == pytest.approx(11.6)  # the small call used room the large could not
    assert quota.hold(large, 3_000, INTERACTIVE, planned, t) is None
    quota.unhold(large, t)
    quota.reserve(3_000, planned)
    assert quota.plan(500, t + 0.1) >= planned
    assert quota.hold(later, 500, INTERACTIVE, quota.plan(500, t + 0.1), t + 0.1) is not None


def test_a_stream_of_small_calls_never_starves_a_large_one() -> None:
    """Calls that fit keep arriving every half second and take the room as it frees; the
    large call books once it has been the head for the aging time, and every call planned
    after that comes after its slot."""
    quota = DeploymentQuota("d", TPM)
    start = now = fill(quota)
    large = object()
    slot: float | None = None
    small_sent = 0
    while slot is None:
        at = quota.plan(3_000, now)
        if quota.hold(large, 3_000, INTERACTIVE, at, now) is None:
            quota.unhold(large, now)
            quota.reserve(3_000, at)
            slot = at
            break
        small_at = quota.plan(600, now)
        if small_at - now < 0.05:
            send(quota, 600, small_at)
            small_sent += 1
        now += 0.5
    assert small_sent >= 2  # the room the large call could not use was used
    assert now - start <= AGE_S
    assert quota.plan(600, now + 0.5) >= slot


def test_the_larger_of_two_calls_that_fit_goes_first_but_steps_aside_only_so_often() -> None:
    room = WaitingRoom()
    room.enter("head", 900.0, wake_at=50.0, now=0.0)
    room.enter("small", 210.0, wake_at=5.0, now=1.0)
    room.enter("large", 350.0, wake_at=5.0, now=2.0)
    assert room.steps_aside("small", 210.0, room=400.0, now=5.0)
    assert not room.steps_aside("large", 350.0, room=400.0, now=5.0)
    assert not room.steps_aside("small", 210.0, room=300.0, now=5.0)  # the large one won't fit
    assert not room.steps_aside("small", 210.0, room=400.0, now=4.0)  # nor is it due yet
    for _ in range(MAX_YIELDS):
        room.steps_aside("small", 210.0, room=400.0, now=5.0)
    assert not room.steps_aside("small", 210.0, room=400.0, now=5.0)


def test_only_the_head_ages_and_the_next_waiter_ages_from_when_it_becomes_the_head() -> None:
    room = WaitingRoom()
    room.enter("a", 500.0, wake_at=20.0, now=0.0)
    room.enter("b", 500.0, wake_at=20.0, now=1.0)
    assert room.aged_at("a", 10.0) == pytest.approx(AGE_S)
    assert room.aged_at("b", 10.0) == float("inf")
    room.leave("a", now=7.0)
    assert room.aged_at("b", 10.0) == pytest.approx(7.0 + AGE_S)
    room.leave("b", now=8.0)
    assert len(room) == 0


@pytest.mark.parametrize("users", [3, 50])
def test_size_aware_admission_packs_the_azure_windows_fuller_than_first_come(users: int) -> None:
    """Whole calls of 13-21 % of the window: first-come leaves the room the head cannot use
    empty (about 0.88-0.91 of the bound here); letting the best-fitting call take it packs
    more, with no 429 from the simulator's limiter."""
    fifo, fifo_refused = limiter(users, size_aware=False)
    aware, refused = limiter(users, size_aware=True)
    assert fifo_refused == refused == 0
    assert aware >= fifo + 0.02
    assert aware >= 0.92


class _StoppedClock(ManualClock):
    """Time stands still and every sleep waits until cancelled (a call parked mid-wait)."""

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.Event().wait()


async def test_a_call_cancelled_while_it_waits_unbooked_leaves_the_waiting_room() -> None:
    from tests.unit.test_llm_guarded import SETTINGS, ScriptedEndpoint, request

    clock = _StoppedClock()
    guarded = GuardedChatModel(ScriptedEndpoint(), settings=SETTINGS, clock=clock)
    quota = guarded.limiter.quota("primary")  # 10,000 tokens per 10 s
    sent = clock.monotonic() - 5.0  # room again 5.1 s from now: within the wait budget
    quota.mark_sent(quota.reserve(9_800, sent), sent)
    task = asyncio.create_task(guarded.complete(request(max_tokens=900)))
    while not clock.slept and not task.done():
        await asyncio.sleep(0)
    assert len(quota.room) == 1  # waiting unbooked, nothing reserved for it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(quota.room) == 0
