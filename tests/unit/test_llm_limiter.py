"""The quota limiter's arithmetic, driven by a hand-moved clock."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devhost.simulator.ratelimit import DeploymentLimiter
from shared.llm.endpoint import RateLimitInfo
from shared.llm.limiter import DeploymentQuota
from shared.llm.windows import SlidingWindow

TPM = 10_000
TOKEN_LIMIT = TPM // 6  # 1,666 tokens per 10 s window
RPM = 60


def _book(quota: DeploymentQuota, cost: int, now: float) -> float:
    at = quota.plan(cost, now)
    reservation = quota.reserve(cost, at)
    quota.mark_sent(reservation, at)
    return at


def test_a_call_that_fits_is_planned_now() -> None:
    quota = DeploymentQuota("d", TPM)
    assert quota.plan(300, 100.0) == 100.0


def test_a_second_call_in_the_same_second_waits_for_the_request_window() -> None:
    quota = DeploymentQuota("d", TPM)  # 60 RPM: one request per second
    first = _book(quota, 100, 100.0)
    second = quota.plan(100, 100.0)
    assert first == 100.0
    assert 101.0 <= second <= 101.2


def test_tokens_booked_for_the_window_push_the_next_call_past_the_oldest_expiry() -> None:
    quota = DeploymentQuota("d", TPM)
    times = [_book(quota, 800, 100.0 + i * 5) for i in range(2)]
    assert times == [100.0, 105.0]
    third = quota.plan(800, 106.0)
    # 1,600 of 1,666 are booked: the third call must wait for the first to leave the window.
    assert third >= 110.0
    assert third <= 110.0 + 0.2


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=20, max_value=900), min_size=5, max_size=60),
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=60, max_size=60),
)
def test_no_window_ever_holds_more_than_the_limit(costs: list[int], gaps: list[float]) -> None:
    quota = DeploymentQuota("d", TPM)
    now = 0.0
    booked: list[tuple[float, int]] = []
    for cost, gap in zip(costs, gaps, strict=False):
        now += gap
        booked.append((_book(quota, cost, now), cost))
    for start, _ in booked:
        in_window = [c for t, c in booked if start - 10.0 < t <= start]
        assert sum(in_window) <= TOKEN_LIMIT
        assert sum(1 for t, _ in booked if start - 1.0 < t <= start) <= RPM // 60


def test_steady_demand_uses_the_whole_window_limit() -> None:
    quota = DeploymentQuota("d", TPM)
    cost = TOKEN_LIMIT // 7  # seven calls fill a window exactly
    now, last, tokens = 0.0, 0.0, 0
    while now < 600.0:
        at = _book(quota, cost, now)
        tokens += cost
        now = last = at
    rate_per_window = tokens / last * 10.0
    assert rate_per_window >= 0.97 * TOKEN_LIMIT


def test_the_simulators_limiter_admits_every_call_the_limiter_schedules() -> None:
    """Replay a random closed-loop schedule on the simulator's own rate limiter: zero refusals."""
    clock = {"now": 0.0}
    server = DeploymentLimiter(tpm=TPM, rpm=RPM, clock=lambda: clock["now"])
    quota = DeploymentQuota("d", TPM)
    rng = random.Random(7)
    pending = [(0.0, rng.randint(150, 400)) for _ in range(12)]  # 12 users
    admitted = refused = 0
    while pending and clock["now"] < 300.0:
        pending.sort()
        ready, cost = pending.pop(0)
        at = quota.plan(cost, ready)
        reservation = quota.reserve(cost, at)
        quota.mark_sent(reservation, at)
        clock["now"] = at
        decision = server.try_acquire(cost)
        admitted += decision.admitted
        refused += not decision.admitted
        quota.observe(
            reservation,
            RateLimitInfo(decision.remaining_tokens, decision.remaining_requests, None),
            at,
        )
        pending.append((at + 0.3 + rng.random(), rng.randint(150, 400)))
    assert refused == 0
    assert admitted > 100


def test_a_throttle_blocks_planning_until_the_retry_after() -> None:
    quota = DeploymentQuota("d", TPM)
    quota.throttle(4.5, 100.0)
    assert quota.plan(10, 100.0) == 104.5


def test_a_429_without_retry_after_waits_until_our_oldest_charge_leaves_the_window() -> None:
    """No retry-after: the server's window is full, and the first room we know of comes when
    the oldest call we sent leaves the 10 s window (plus the 0.1 s guard), at least a second
    later and at most half a window. Azure OpenAI itself sends ``retry-after-ms`` and
    ``retry-after`` with its 429s ("Azure OpenAI quota management",
    https://learn.microsoft.com/azure/ai-services/openai/how-to/quota); a 429 without them comes
    from something in between (a gateway, a proxy), which is the case this covers."""
    quota = DeploymentQuota("d", TPM)
    _book(quota, 800, 100.0)
    quota.throttle(None, 108.0)
    assert quota.plan(10, 108.0) == pytest.approx(110.1)
    quota.throttle(None, 109.9)  # the charge leaves in 0.2 s: the request windows still hold
    assert quota.plan(10, 109.9) == pytest.approx(110.9)
    quota.throttle(None, 110.5)  # nothing of ours is left with the server
    assert quota.plan(10, 110.5) == pytest.approx(115.5)


def test_remaining_tokens_below_our_booking_reveal_foreign_use_and_slow_us_down() -> None:
    quota = DeploymentQuota("d", TPM)
    reservation = quota.reserve(200, 100.0)
    quota.mark_sent(reservation, 100.0)
    # The server has only 266 left: someone else spent 1,200 tokens in this window.
    quota.observe(reservation, RateLimitInfo(remaining_tokens=TOKEN_LIMIT - 1400), 100.3)
    assert quota.plan(600, 101.5) > 109.0


def test_remaining_tokens_that_match_our_booking_change_nothing() -> None:
    quota = DeploymentQuota("d", TPM)
    reservation = quota.reserve(200, 100.0)
    quota.mark_sent(reservation, 100.0)
    quota.observe(reservation, RateLimitInfo(remaining_tokens=TOKEN_LIMIT - 200), 100.3)
    assert quota.plan(1400, 102.0) == 102.0


def test_a_released_reservation_frees_its_slot() -> None:
    quota = DeploymentQuota("d", TPM)
    held = quota.reserve(1600, 100.0)
    assert quota.plan(500, 100.0) > 105.0
    quota.release(held)
    assert quota.plan(500, 100.0) == 100.0


def test_a_share_scales_the_window_limit() -> None:
    quota = DeploymentQuota("d", TPM)
    quota.set_share(0.5)
    _book(quota, 800, 100.0)
    assert quota.plan(100, 102.0) >= 110.0


def test_a_fractional_request_share_stretches_the_window() -> None:
    window = SlidingWindow(0.5, 1.0, guard_s=0.0)
    assert (window.limit, window.window_s) == (1.0, 2.0)


def test_a_deployment_without_a_known_quota_is_limited_only_by_throttles() -> None:
    quota = DeploymentQuota("d", None)
    for _ in range(100):
        assert _book(quota, 5000, 100.0) == 100.0
    quota.throttle(2.0, 100.0)
    assert quota.plan(1, 100.0) == 102.0


def test_an_estimate_larger_than_the_window_waits_for_an_empty_window() -> None:
    quota = DeploymentQuota("d", TPM)
    _book(quota, 100, 100.0)
    at = quota.plan(5000, 100.0)
    assert at >= 110.0


def test_a_refused_call_is_refunded_because_the_server_charged_nothing() -> None:
    quota = DeploymentQuota("d", TPM)
    refused = quota.reserve(1600, 100.0)
    quota.mark_sent(refused, 100.0)
    quota.refund(refused)
    assert quota.plan(1600, 101.5) == 101.5


def test_a_burst_from_idle_is_paced_after_a_fifth_of_a_window() -> None:
    quota = DeploymentQuota("d", 600_000)  # 100,000 tokens per window, 60 requests per second
    times = [_book(quota, 1000, 100.0) for _ in range(60)]
    immediate = [t for t in times if t == 100.0]
    assert 20 <= len(immediate) <= 22  # a fifth of the window's tokens at once
    gaps = [b - a for a, b in itertools.pairwise(times[30:])]
    # then one 1,000-token call per 1,000 / (100,000 / 10.1 s) seconds
    assert all(gap == pytest.approx(0.101, abs=1e-6) for gap in gaps)


def test_calls_sent_away_are_told_to_come_back_one_after_another() -> None:
    quota = DeploymentQuota("d", TPM)
    rate = TOKEN_LIMIT / 10.1
    first = quota.defer(330, 120.0)
    second = quota.defer(330, 120.0)
    third = quota.defer(165, 110.0)
    assert first == 120.0
    assert second == pytest.approx(120.0 + 330 / rate)
    assert third == pytest.approx(second + 330 / rate)


def test_calls_sent_away_come_back_at_the_full_rate_whatever_this_instance_s_share() -> None:
    """A burst meets a small share; spaced at it, the backlog could never use a larger one."""
    quota = DeploymentQuota("d", TPM)
    quota.set_share(0.1)
    full_rate = TOKEN_LIMIT / 10.1
    times = [quota.defer(330, 100.0) for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([330 / full_rate] * 4)
    # ... while calls that stay are paced at the share.
    assert quota.plan(330, 0.0) == 0.0
    quota.reserve(330, 0.0)
    assert quota.plan(330, 0.0) > 330 / full_rate * 5


def test_a_call_sent_away_never_comes_back_before_its_own_plan() -> None:
    quota = DeploymentQuota("d", TPM)
    quota.defer(330, 120.0)
    assert quota.defer(100, 500.0) == 500.0


def test_a_surprise_throttle_widens_the_guard_in_proportion_and_time_narrows_it() -> None:
    quota = DeploymentQuota("d", TPM)
    quota.throttle(0.4, 100.0)  # an exact retry-after-ms: 0.4 s of skew
    assert quota.guard_s == pytest.approx(0.5)
    assert quota.guard_for(1.0) == pytest.approx(0.15)  # the 1 s window: at most 5 % of it
    quota.plan(1, 120.0)  # 20 s later half the widening is gone, however many answers came
    assert quota.guard_s == pytest.approx(0.1 + 0.4 * 0.5, abs=1e-3)
    first = _book(quota, 1600, 120.0)
    assert quota.plan(100, first) == pytest.approx(first + 10.0 + quota.guard_s, abs=1e-3)
    quota.plan(1, 400.0)
    assert quota.guard_s == pytest.approx(0.1)


def test_a_whole_second_retry_after_widens_the_guard_only_a_step() -> None:
    quota = DeploymentQuota("d", TPM)
    quota.throttle(1.0, 100.0)
    assert quota.guard_s == pytest.approx(0.1 + 0.005 * 10.0)
    assert quota.guard_for(1.0) == pytest.approx(0.15)
    assert quota.blocked_until == 101.0


def test_whole_second_429s_in_a_row_keep_widening_the_guard_up_to_its_cap() -> None:
    quota = DeploymentQuota("d", TPM)
    guards = []
    for i in range(15):
        quota.throttle(1.0, 100.0 + i * 0.01)
        guards.append(quota.guard_s)
    assert guards[1] > guards[0]  # a second 429 is evidence too
    assert guards[-1] == pytest.approx(0.1 + 0.05 * 10.0)  # the cap: 5 % of the window
    assert quota.guard_for(1.0) == pytest.approx(0.1 + 0.05)


def test_a_stray_429_with_room_left_blocks_but_does_not_widen_the_guard() -> None:
    quota = DeploymentQuota("d", TPM)
    room = RateLimitInfo(remaining_tokens=1_200, remaining_requests=5, retry_after_s=1.0)
    quota.throttle(1.0, 100.0, rate=room, charge=300.0)
    assert quota.guard_s == pytest.approx(0.1)
    assert quota.plan(300, 100.0) == 101.0
    full = RateLimitInfo(remaining_tokens=100, remaining_requests=5, retry_after_s=1.0)
    quota.throttle(1.0, 100.0, rate=full, charge=300.0)
    assert quota.guard_s > 0.1


def test_peak_use_is_the_fullest_window_from_now_on_not_everything_booked() -> None:
    """A backlog booked ahead at the window's pace holds one window's worth at any moment;
    the fullest ``window_s`` stretch ending now or later is what it takes of the window."""
    from shared.llm.windows import Charge, peak_use

    lanes = [SlidingWindow(10_000, 10.0), SlidingWindow(10_000, 10.0)]
    # 1,000 tokens a second for 30 s, alternating lanes: 10,000 in any 10 s stretch.
    for second in range(30):
        lanes[second % 2].add(Charge(100.0 + second, 1_000))
    assert peak_use(lanes, 10.0, now=100.0) == 10_000
    # Late on, only what is left: the stretch ending at 129 holds 120..129.
    assert peak_use(lanes, 10.0, now=125.0) == 10_000
    assert peak_use(lanes, 10.0, now=140.0) == 0
    # A clump ahead counts in full, with what shares a window with it: (125, 135] holds
    # 126..129 and the clump.
    lanes[0].add(Charge(135.0, 5_000))
    assert peak_use(lanes, 10.0, now=130.0) == 4_000 + 5_000
    assert peak_use(lanes, 10.0, now=131.0) == 4_000 + 5_000
    assert peak_use(lanes, 10.0, now=136.0) == 3_000 + 5_000  # (126, 136]
    assert peak_use([], 10.0, now=0.0) == 0


def test_used_share_counts_a_backlog_booked_ahead_as_one_window_not_all_of_it() -> None:
    """What an instance reports to the ledger is what it holds of the deployment's window;
    a queue of calls booked over the next minute is not six windows' worth of claim."""
    quota = DeploymentQuota("d", tpm=60_000)
    now = 100.0
    for _ in range(60):
        at = quota.plan(1_000, now)
        quota.mark_sent(quota.reserve(1_000, at), at)
    # 60,000 TPM is 10,000 per 10 s: sixty calls of 1,000 span a minute of bookings.
    assert quota.used_share(now) <= 1.0
    assert quota.used_share(now) == pytest.approx(1.0, abs=0.1)


def test_the_pace_owed_at_a_tiny_share_shrinks_when_the_share_grows() -> None:
    """A newcomer's first share may be near zero until the others' charges leave; the call it
    sends then moves its pace minutes ahead (500 tokens at about one token a second). When
    the share grows to half, what it owes is owed at the larger rate: the next call is paced
    within the window, not minutes out."""
    quota = DeploymentQuota("d", tpm=60_000)
    quota.set_share(0.001)
    now = 100.0
    first = quota.plan(500, now)
    quota.mark_sent(quota.reserve(500, first), first)
    assert quota.plan(500, now + 1.0) > now + 60.0  # at the tiny share: paced minutes out
    quota.set_share(0.5)
    assert quota.plan(500, now + 1.0) <= now + 10.0


def test_calls_waiting_at_a_small_share_are_booked_sooner_when_it_grows() -> None:
    """Twelve 500-token calls book their slots at a quarter of a 60,000 TPM deployment (2,500
    tokens per 10 s): the last sleeps 20 s out. The share grows to all of it; booked again,
    every call keeps its order, none moves later, the last goes within 5 s, and the server's
    own windows (the simulator's Azure profile: 10,000 tokens per 10 s and 6 requests per
    1,000 TPM per minute over 1 s and 10 s, as "Manage Azure OpenAI quota" describes, under
    Understanding rate limits: https://learn.microsoft.com/azure/ai-services/openai/how-to/quota)
    admit every one of them at its new slot."""
    quota = DeploymentQuota("d", tpm=60_000)
    quota.set_share(0.25)
    now = 100.0
    booked = [quota.reserve(500, quota.plan(500, now)) for _ in range(12)]
    before = [reservation.at for reservation in booked]
    assert before[-1] > now + 15.0
    quota.set_share(1.0)
    quota.rebook_waiting(now)
    after = [reservation.at for reservation in booked]
    assert after == sorted(after)
    assert all(a <= b for a, b in zip(after, before, strict=True))
    assert after[-1] <= now + 5.0
    clock = {"now": now}
    server = DeploymentLimiter(tpm=60_000, rpm=360, clock=lambda: clock["now"])
    for reservation in booked:
        clock["now"] = reservation.at
        quota.mark_sent(reservation, reservation.at)
        assert server.try_acquire(500).admitted


def test_calls_already_sent_keep_their_charges_when_the_waiting_ones_move() -> None:
    """Only calls still waiting for their slots move: those sent keep their charges where the
    server counted them, and the waiting ones fit around them."""
    quota = DeploymentQuota("d", tpm=60_000)
    quota.set_share(0.25)
    now = 100.0
    booked = [quota.reserve(500, quota.plan(500, now)) for _ in range(8)]
    for reservation in booked[:2]:
        quota.mark_sent(reservation, reservation.at)
    sent = [(r.at, [charge.at for _, charge in r.charges]) for r in booked[:2]]
    later = now + 2.0
    assert all(r.at <= later for r in booked[:2])
    assert booked[-1].at > now + 10.0
    quota.set_share(1.0)
    quota.rebook_waiting(later)
    assert [(r.at, [charge.at for _, charge in r.charges]) for r in booked[:2]] == sent
    assert all(later <= r.at < now + 7.0 for r in booked[2:])


def test_calls_booked_again_move_up_again_when_the_share_grows_a_second_time() -> None:
    """A share often grows over several heartbeats (as another instance's charges leave):
    calls booked again at the first growth are still the quota's waiting calls at the next.
    Here every call waits (nothing may go before a retry-after 2 s out), so no sent call
    stands before them among the live bookings."""
    quota = DeploymentQuota("d", tpm=60_000)
    quota.set_share(0.1)
    now = 100.0
    quota.blocked_until = now + 2.0
    booked = [quota.reserve(500, quota.plan(500, now)) for _ in range(8)]
    quota.set_share(0.3)
    quota.rebook_waiting(now)
    once = booked[-1].at
    quota.set_share(1.0)
    quota.rebook_waiting(now)
    assert booked[-1].at < once - 5.0
    assert booked[-1].at <= now + 7.0
