"""The simulator's rate windows, driven by a hand-moved clock (no sleeping)."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from devhost.simulator.ratelimit import DeploymentLimiter
from tests.support.clock import FakeClock


def limiter(tpm: int, rpm: int, clock: FakeClock) -> DeploymentLimiter:
    # A lambda, not the clock object, so that deep copies of the limiter share this clock.
    return DeploymentLimiter(tpm=tpm, rpm=rpm, clock=lambda: clock())


def test_capacities_follow_azure_ratios() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(10_000, 60, clock)
    assert lim.token_capacity == 10_000 // 6
    assert lim.requests_per_1s == 1
    assert lim.requests_per_10s == 10
    lim.rpm = 61
    assert (lim.requests_per_1s, lim.requests_per_10s) == (2, 11)


def test_a_full_token_window_refuses_with_the_exact_wait_until_the_oldest_charge_leaves() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(60_000, 6_000, clock)  # 10,000 tokens per 10 s; requests never bind here
    assert lim.try_acquire(4_000).admitted
    clock.advance(2)
    assert lim.try_acquire(4_000).admitted
    clock.advance(1)
    refused = lim.try_acquire(4_000)
    assert not refused.admitted
    assert refused.limited_by == "tokens"
    assert refused.retry_after_ms == 7_000  # the charge at t=0 leaves at t=10
    assert refused.remaining_tokens == 2_000
    clock.advance(6.999)
    assert lim.try_acquire(4_000).retry_after_ms == 1
    clock.advance(0.001)
    assert lim.try_acquire(4_000).admitted


def test_a_refused_request_is_not_charged() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(60_000, 6_000, clock)
    lim.try_acquire(9_000)
    before = lim.peek().remaining_tokens
    for _ in range(5):
        assert not lim.try_acquire(5_000).admitted
    assert lim.peek().remaining_tokens == before == 1_000
    assert lim.try_acquire(1_000).admitted


def test_the_wait_frees_just_enough_of_the_oldest_charges() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(60_000, 6_000, clock)
    for _ in range(5):
        assert lim.try_acquire(2_000).admitted
        clock.advance(1)
    # Charges at t=0..4 fill the window; 3,000 more needs the t=0 and t=1 charges gone.
    assert lim.try_acquire(3_000).retry_after_ms == 6_000


def test_the_one_second_window_limits_bursts_of_requests() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(10_000, 60, clock)  # one request per second
    assert lim.try_acquire(10).admitted
    clock.advance(0.4)
    refused = lim.try_acquire(10)
    assert not refused.admitted
    assert refused.limited_by == "requests"
    assert refused.retry_after_ms == 600
    assert refused.remaining_requests == 0
    clock.advance(0.6)
    assert lim.try_acquire(10).admitted


def test_the_ten_second_window_limits_sustained_requests() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(600_000, 61, clock)  # 2 per second, but only 11 per 10 s
    admitted = 0
    for _ in range(5):
        admitted += lim.try_acquire(1).admitted + lim.try_acquire(1).admitted
        clock.advance(1)
    admitted += lim.try_acquire(1).admitted
    assert admitted == 11
    clock.advance(0.5)  # t = 5.5: the 1 s window has room, the 10 s one does not
    refused = lim.try_acquire(1)
    assert not refused.admitted
    assert refused.limited_by == "requests"
    assert refused.retry_after_ms == 4_500


def test_the_wait_is_the_longest_of_the_windows() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(6_000, 60, clock)  # 1,000 tokens per 10 s, 1 request per s
    assert lim.try_acquire(1_000).admitted
    clock.advance(0.5)
    refused = lim.try_acquire(100)
    assert refused.retry_after_ms == 9_500  # tokens (9.5 s) outlast the 1 s window (0.5 s)
    assert refused.limited_by == "tokens"


def test_an_oversized_request_waits_for_an_empty_window_and_is_charged_its_capacity() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(6_000, 600, clock)
    first = lim.try_acquire(50_000)
    assert first.admitted
    assert first.remaining_tokens == 0
    clock.advance(3)
    assert lim.try_acquire(50_000).retry_after_ms == 7_000


def test_remaining_counts_describe_what_fits_after_the_charge() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(60_000, 360, clock)  # 6 per s, 60 per 10 s
    decision = lim.try_acquire(300)
    assert decision.remaining_tokens == 9_700
    assert decision.remaining_requests == 5


def test_new_limits_apply_to_the_existing_history() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(60_000, 6_000, clock)
    assert lim.try_acquire(2_000).admitted
    lim.tpm = 12_000  # 2,000 per 10 s: now full
    assert not lim.try_acquire(1).admitted
    lim.reset()
    assert lim.try_acquire(1).admitted


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=3), st.integers(min_value=1, max_value=4_000)),
        min_size=1,
        max_size=40,
    ),
    tpm=st.integers(min_value=600, max_value=120_000),
    rpm=st.integers(min_value=1, max_value=1_200),
)
def test_retry_after_is_exactly_when_the_refused_request_would_fit(
    steps: list[tuple[float, int]], tpm: int, rpm: int
) -> None:
    clock = FakeClock(1000.0)
    lim = limiter(tpm, rpm, clock)
    for gap, cost in steps:
        clock.advance(gap)
        decision = lim.try_acquire(cost)
        if decision.admitted:
            continue
        start = clock.now
        wait_s = decision.retry_after_ms / 1000
        probe = copy.deepcopy(lim)  # probing expires charges, so never probe the real one
        if decision.retry_after_ms > 1:
            clock.now = start + wait_s - 0.002
            assert not probe.peek(cost).admitted, "admitted before retry-after-ms"
        clock.now = start + wait_s
        assert probe.peek(cost).admitted, "not admitted after retry-after-ms"
        clock.now = start
