"""How a deployment's quota moves between instances: what each may spend while the window
still holds another's charges, and what an instance that stopped calling keeps.

The deployment is 60,000 TPM under Azure's accounting: 10,000 tokens in any 10 s window. Azure
evaluates the rate of incoming requests over a short period, typically 1 or 10 seconds, against
the per-minute limit scaled to that period ("Manage Azure OpenAI quota", Understanding rate
limits, https://learn.microsoft.com/azure/ai-services/openai/how-to/quota); the simulator's
Azure profile (``devhost.simulator.accounting.AZURE``) keeps the 10 s token window. Each
instance runs as the guarded client does: note its demand, heartbeat when one is due, send what
its limiter admits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.local.quota_ledger import SqliteQuotaLedger
from shared.domain.messages import Priority, Stage
from shared.errors import RetryLater
from shared.llm.ledger import (
    MOVING_BEAT,
    QUIET_BEATS,
    Lease,
    ShareCoordinator,
    allocate_shares,
    hand_over,
)
from shared.llm.limiter import QuotaLimiter
from shared.llm.reservation import call_size
from tests.support.clock import ManualClock
from tests.support.quota import GatedLedger, slot_picker

WINDOW_TOKENS = 10_000
CALL = 500
TICK = 0.25


async def _run(
    tmp_path: Path,
    seconds: float,
    running: Callable[[str, float], bool],
    lanes: Mapping[str, Priority] | None = None,
) -> tuple[list[tuple[float, str]], dict[str, QuotaLimiter]]:
    """Instances a, b and c send 500-token calls (in their ``lanes``, interactive by default)
    every tick while ``running(name, t)``; the calls sent, by time and instance, and each
    instance's limiter at the end."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    limiters = {name: QuotaLimiter({"d": 60_000}) for name in "abc"}
    coordinators = {
        name: ShareCoordinator(SqliteQuotaLedger(path), limiter, instance_id=name, clock=clock)
        for name, limiter in limiters.items()
    }
    sent: list[tuple[float, str]] = []
    start = clock.monotonic()
    try:
        while clock.monotonic() - start < seconds:
            t = clock.monotonic() - start
            for name, coordinator in coordinators.items():
                if not running(name, t):
                    continue
                quota = limiters[name].quota("d")
                lane = (lanes or {}).get(name, Priority.INTERACTIVE)
                coordinator.note_demand("d", CALL, lane)
                await coordinator.refresh("d")
                now = clock.monotonic()
                if quota.plan(CALL, now, lane) <= now:
                    quota.mark_sent(quota.reserve(CALL, now, lane), now)
                    sent.append((t, name))
            clock.advance(TICK)
    finally:
        for coordinator in coordinators.values():
            await coordinator.close()
    return sent, limiters


def _fullest_window(sent: list[tuple[float, str]]) -> int:
    """The most tokens the server's 10 s window held at any send."""
    return max(sum(CALL for u, _ in sent if t - 10.0 < u <= t) for t, _ in sent)


async def test_a_share_moves_between_instances_without_spending_the_window_twice(
    tmp_path: Path,
) -> None:
    """a has the deployment to itself and fills its window with batch calls; b starts at 20 s
    and wants interactive quota. At no moment do their charges together exceed the window (a,
    shrinking over several heartbeats as b's demand grows, beats again a second after each
    shrink), and b ends with the larger share."""
    lanes = {"a": Priority.BATCH, "b": Priority.INTERACTIVE}
    sent, _ = await _run(
        tmp_path, 60.0, lambda name, t: name == "a" or (name == "b" and t >= 20.0), lanes
    )
    assert _fullest_window(sent) <= WINDOW_TOKENS
    last = [name for t, name in sent if t > 50.0]
    b_tokens, a_tokens = CALL * last.count("b"), CALL * last.count("a")
    assert b_tokens > 2 * a_tokens > 0  # interactive first, batch still progressing
    assert a_tokens + b_tokens >= 0.85 * WINDOW_TOKENS  # the two together still use the window


async def test_a_newcomer_grows_into_its_share_overlapping_the_others_by_two_calls_at_most(
    tmp_path: Path,
) -> None:
    """a and b fill the deployment; c starts at 30 s and ends with its third, and the window
    never holds more than two calls past its limit."""
    starts = {"a": 0.0, "b": 10.0, "c": 30.0}
    sent, limiters = await _run(tmp_path, 70.0, lambda name, t: t >= starts[name])
    # A newcomer reads the others' leases as of their last heartbeat; what they sent since
    # can overlap its first calls, while b's demand (it came at 10 s) is still growing and the
    # splits read at different heartbeats add up to a little more than the deployment (the
    # gap shared.llm.ledger describes).
    assert _fullest_window(sent) <= WINDOW_TOKENS + 2 * CALL
    assert limiters["c"].quota("d").share == pytest.approx(1 / 3, abs=0.05)


async def test_an_instance_that_stops_calling_hands_its_share_back_before_its_lease_lapses(
    tmp_path: Path,
) -> None:
    """a starts; b joins at 10 s, stops calling at 40 s and renews its lease no more. Once it
    has missed its heartbeats (1.5 of them) it is counted as wanting nothing, and its charges
    as leaving the window: a takes the deployment back within one window of b's last call,
    without waiting for the lease to lapse (three heartbeats), and the window is never spent
    twice."""

    def running(name: str, t: float) -> bool:
        return name == "a" or (name == "b" and 10.0 <= t < 40.0)

    sent, limiters = await _run(tmp_path, 52.0, running)
    # b's arrival may overlap a by a call (the gap shared.llm.ledger describes); b's going
    # quiet must not add to it.
    assert _fullest_window(sent) <= WINDOW_TOKENS + CALL
    after = [t for t, _ in sent if t >= 40.0]
    assert max(sum(CALL for u, _ in sent if t - 10.0 < u <= t) for t in after) <= WINDOW_TOKENS
    assert limiters["a"].quota("d").share >= 0.9
    assert sum(CALL for t, name in sent if name == "a" and t >= 50.0) >= 1_000


def test_instances_that_shrank_keep_their_split_and_a_newcomer_waits_for_the_room() -> None:
    """a and b each held half of the deployment when c arrived; now each is split a third.
    a and b still hold half each in the window, so nothing is free: c waits for their charges
    to leave, and a and b each keep their third, which their own windows hold them to until
    their charges fall below it. Holding a and b short as well (for each other's old charges
    on top of c's new split, as a newcomer does) would leave them at a sixth each for a
    heartbeat, and the deployment a third idle, in the middle of a hand-over."""
    third = 100_000 / 3
    leases = {"a": Lease(used=50_000.0), "b": Lease(used=50_000.0), "c": Lease()}
    grants = hand_over(leases, dict.fromkeys("abc", third), 100_000)
    assert grants == pytest.approx({"a": third, "b": third, "c": 0.0})
    # Half of a's charges have left: c grows into what left, and no further.
    leases["a"] = Lease(used=40_000.0)
    leases["b"] = Lease(used=40_000.0)
    grants = hand_over(leases, dict.fromkeys("abc", third), 100_000)
    assert grants["c"] == pytest.approx(20_000)


def test_what_nobody_asked_for_goes_where_the_demand_is() -> None:
    """A light instance gets what it asks for; the rest of the deployment goes to the busy
    one, whose demand follows the share it was given, not half to each."""
    shares = allocate_shares({"busy": 9_000, "light": 500}, 10_000)
    assert shares["light"] == pytest.approx(500 + 500 * 500 / 9_500)
    assert shares["busy"] == pytest.approx(9_000 + 500 * 9_000 / 9_500)


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=1e5), st.floats(min_value=0, max_value=1e5)),
        min_size=1,
        max_size=6,
    ),
)
def test_the_window_is_never_spent_twice_and_settled_splits_are_granted_whole(
    rows: list[tuple[float, float]],
) -> None:
    """Whatever each instance holds and asks for: what they hold or may spend together never
    exceeds the capacity (or what they already hold, if more); once nobody holds more than
    its split, every instance may spend its whole split."""
    capacity = 100_000.0
    leases = {str(i): Lease(interactive=demand, used=used) for i, (demand, used) in enumerate(rows)}
    splits = allocate_shares({i: lease.demand for i, lease in leases.items()}, capacity)
    grants = hand_over(leases, splits, capacity)
    held = sum(lease.used for lease in leases.values())
    total = sum(max(leases[i].used, grants[i]) for i in leases)
    assert total <= max(capacity, held) * (1 + 1e-9) + 1e-6
    settled = {
        i: Lease(interactive=leases[i].demand, used=min(leases[i].used, s))
        for i, s in splits.items()
    }
    assert hand_over(settled, splits, capacity) == pytest.approx(splits)


async def test_an_instance_whose_calls_wait_for_their_slots_keeps_renewing_its_lease(
    tmp_path: Path,
) -> None:
    """A call booked 12 s out sleeps until its slot. Its instance renews its lease on the
    way, as a heartbeat falls due, so the others do not count it as quiet (not renewed for
    1.5 heartbeats) and grow into charges it is about to make."""
    clock = ManualClock()
    ledger = GatedLedger(SqliteQuotaLedger(tmp_path / "q.sqlite3"), open_=True)
    limiter = QuotaLimiter({"d": 60_000})
    shares = ShareCoordinator(ledger, limiter, instance_id="a", clock=clock, heartbeat_s=5.0)
    picker = slot_picker(limiter, shares, clock)
    # Nothing may go for 12 s (as after a retry-after): the slot is 12 s out. 400 tokens are
    # 4 % of the window, so the call books ahead rather than wait unbooked for a better fit.
    limiter.quota("d").blocked_until = clock.monotonic() + 12.0
    slot = await picker.take(Stage.INTENT, ["d"], call_size(400), clock.monotonic() + 15.0, 0)
    assert slot.wait_s == pytest.approx(12.0)
    start = clock.time()
    await picker.wait(slot)
    await shares.close()
    assert clock.time() == pytest.approx(start + 12.0)
    assert ledger.at[-1] >= start + 10.0
    assert max(b - a for a, b in itertools.pairwise(ledger.at)) <= 5.0 + 1e-9


async def test_a_lease_renewed_on_a_shorter_heartbeat_is_not_taken_for_quiet(
    tmp_path: Path,
) -> None:
    """Instances need not share a heartbeat interval (``LLM_QUOTA_HEARTBEAT_S`` may differ
    between two apps, or during a rolling change). ``slow`` beats every 10 s and reads the
    lease ``fast`` (every 2 s) renewed a second ago: ``fast`` is calling, and its demand
    counts. Judging renewal from the lease's expiry and the reader's own interval would date
    it 24 s back, call it quiet, and hand its share to ``slow``."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    fast_limiter, slow_limiter = QuotaLimiter({"d": 60_000}), QuotaLimiter({"d": 60_000})
    fast = ShareCoordinator(
        SqliteQuotaLedger(path), fast_limiter, instance_id="fast", clock=clock, heartbeat_s=2.0
    )
    slow = ShareCoordinator(
        SqliteQuotaLedger(path), slow_limiter, instance_id="slow", clock=clock, heartbeat_s=10.0
    )
    try:
        fast.note_demand("d", 50_000)
        await fast.refresh("d")
        clock.advance(1.0)
        slow.note_demand("d", 50_000)
        await slow.refresh("d")
        assert slow_limiter.quota("d").share == pytest.approx(0.5, abs=0.05)
    finally:
        await fast.close()
        await slow.close()


async def test_calls_waiting_at_a_half_share_go_sooner_once_the_other_instance_leaves(
    tmp_path: Path,
) -> None:
    """a and b both want the whole of a 600,000 TPM deployment: a gets half and books
    2,000-token calls at it (2 % of its window: they book ahead first-come, not size-aware),
    up to its 10 s wait budget. b leaves; at a's next heartbeat its share grows, and its
    waiting calls are booked again at the whole deployment: the last one's wait ends seconds
    sooner than it was booked for, instead of keeping the half share's pace."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    limiters = {name: QuotaLimiter({"d": 600_000}) for name in "ab"}
    coordinators = {
        name: ShareCoordinator(
            SqliteQuotaLedger(path), limiters[name], instance_id=name, clock=clock
        )
        for name in "ab"
    }
    for name in "ba":
        coordinators[name].note_demand("d", 600_000)
        await coordinators[name].refresh("d")
    assert limiters["a"].quota("d").share == pytest.approx(0.5, abs=0.01)
    picker = slot_picker(limiters["a"], coordinators["a"], clock)
    deadline = clock.monotonic() + 10.0
    slots = []
    while True:
        try:
            slots.append(await picker.take(Stage.INTENT, ["d"], call_size(2_000), deadline, 0))
        except RetryLater:
            break
    last = slots[-1]
    booked_wait = last.wait_s
    assert booked_wait > 7.0
    await coordinators["b"].close()
    try:
        await picker.wait(last)
    finally:
        await coordinators["a"].close()
    assert limiters["a"].quota("d").share == pytest.approx(1.0)
    assert last.wait_s <= booked_wait - 3.0


async def test_an_instance_going_quiet_or_calling_again_makes_the_others_beat_within_a_second(
    tmp_path: Path,
) -> None:
    """The split follows the instances that are calling, so an instance going quiet changes
    the set as much as one leaving: b stops calling, and once a reads it as quiet a beats again
    a second later, as its share grows (b's lease itself lives on for three heartbeats, so the
    set of leases has not changed). b calls again before its lease lapses: at the first
    heartbeat that reads it, a's share shrinks, and a beats again a second later too."""
    clock = ManualClock()
    path = tmp_path / "q.sqlite3"
    ledger_a = GatedLedger(SqliteQuotaLedger(path), open_=True)
    a = ShareCoordinator(ledger_a, QuotaLimiter({"d": 60_000}), instance_id="a", clock=clock)
    b = ShareCoordinator(
        SqliteQuotaLedger(path), QuotaLimiter({"d": 60_000}), instance_id="b", clock=clock
    )
    start = clock.time()

    async def tick(*names: str) -> None:
        for name, coordinator in (("a", a), ("b", b)):
            if name in names:
                coordinator.note_demand("d", CALL)
                await coordinator.refresh("d")
        clock.advance(TICK)

    try:
        for _ in range(int(20 / TICK)):
            await tick("a", "b")
        quiet_from = clock.time()
        for _ in range(int(10 / TICK)):  # quiet after 7.5 s, its lease lapses after 15
            await tick("a")
        back = clock.time()
        for _ in range(int(15 / TICK)):
            await tick("a", "b")
    finally:
        await a.close()
        await b.close()
    beats = [t - start for t in ledger_a.at]
    quiet = [t for t in beats if t - (quiet_from - start) >= QUIET_BEATS * a.heartbeat_s]
    assert quiet[1] - quiet[0] <= MOVING_BEAT * a.heartbeat_s + TICK
    again = [t for t in beats if t > back - start]
    assert again[1] - again[0] <= MOVING_BEAT * a.heartbeat_s + TICK


async def test_an_instance_calling_again_while_the_other_grows_overlaps_it_by_three_calls_at_most(
    tmp_path: Path,
) -> None:
    """b stops calling at 20 s; a, reading it as quiet from 27.5 s, grows into its share. b
    calls again a few seconds later, while a's charges are still growing towards that share:
    b's first heartbeat counts what a has charged as of a's last lease, not the share a may
    spend until its next one, and the window can hold up to three calls past its limit (the
    gap shared.llm.ledger describes, at its widest in these scenarios). Once a has beaten
    again, the two share the deployment within it."""
    for back in (28.0, 30.0, 31.0, 32.0, 33.0):

        def running(name: str, t: float, back: float = back) -> bool:
            return name == "a" or (name == "b" and (5.0 <= t < 20.0 or t >= back))

        sent, limiters = await _run(tmp_path / str(back), 70.0, running)
        assert _fullest_window(sent) <= WINDOW_TOKENS + 3 * CALL
        settled = [t for t, _ in sent if t >= back + 15.0]
        assert (
            max(sum(CALL for u, _ in sent if t - 10.0 < u <= t) for t in settled) <= WINDOW_TOKENS
        )
        assert limiters["b"].quota("d").share == pytest.approx(0.5, abs=0.05)
