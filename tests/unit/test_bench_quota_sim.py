"""``bench.quota_sim``: a ``bench.quota`` cell of the guarded client replayed in simulated time,
checked against what holds of any closed loop whatever its admission rules: Little's law, the
loop's own bound, and the server's windows (Azure evaluates its quota "over 1 or 10 second"
windows: https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate
limits")."""

from __future__ import annotations

import random

import pytest

from bench.quota import Row
from bench.quota_load import (
    ARRIVAL_PROFILES,
    CALLS,
    LATENCY_MS,
    around,
    quota_bound,
    stray_per_call,
)
from bench.quota_sim import CellSpec, simulate, simulate_lanes, spread_size
from shared.llm.lanes import BATCH, INTERACTIVE

LOOP_S = len(CALLS) * LATENCY_MS / 1000.0


@pytest.mark.parametrize("profile", sorted(ARRIVAL_PROFILES))
def test_conversation_time_obeys_littles_law_when_every_conversation_is_counted(
    profile: str,
) -> None:
    """N = X x R for a closed loop with no think time. Three users at 10,000 TPM: the quota
    binds, and every conversation is minutes shorter than the ten-minute window, so the
    window's completions are every conversation the users ran in it."""
    users, window = 3, 600.0
    tally = simulate(CellSpec(ARRIVAL_PROFILES[profile], 10_000, users, 120.0, window))
    throughput = tally.conversations_done / window
    mean_time = sum(tally.latencies) / len(tally.latencies)
    assert mean_time > 5 * LOOP_S  # the quota binds: calls wait for room
    assert mean_time * throughput == pytest.approx(users, rel=0.05)


def test_where_the_loop_binds_a_conversation_takes_its_three_calls_latency() -> None:
    """Three users cannot fill 210,000 TPM: nothing waits, and goodput is the loop's bound."""
    profile = ARRIVAL_PROFILES["azure"]
    tally = simulate(CellSpec(profile, 210_000, 3, 12.0, 20.0))
    assert tally.latencies
    assert all(t == pytest.approx(LOOP_S) for t in tally.latencies)
    row = Row(210_000, 3, "guarded", tally, 3 / LOOP_S, 20.0, profile, "loop")
    assert row.goodput == pytest.approx(3 / LOOP_S, rel=0.02)


@pytest.mark.parametrize("profile", sorted(ARRIVAL_PROFILES))
@pytest.mark.parametrize("users", [10, 200])
def test_the_server_is_never_asked_for_more_than_its_window_holds(profile: str, users: int) -> None:
    """The guarded client's rules in front of the simulator's limiter: no 429, and what the
    server's windows held over the measuring window (tokens, or requests where those bind) is
    at most the profile's bound, and most of it."""
    accounting = ARRIVAL_PROFILES[profile]
    tally = simulate(CellSpec(accounting, 10_000, users, 60.0, 300.0))
    assert tally.http_calls > 50
    assert tally.throttled == 0
    bound, by = quota_bound(accounting, 10_000)
    goodput = Row(10_000, users, "guarded", tally, bound, 300.0, accounting, by).goodput
    assert 0.85 * bound <= goodput <= bound


def test_conversations_past_the_total_budget_fail_and_their_calls_do_not_count() -> None:
    """With a 2 s total budget, 10 users at 10,000 TPM: conversations sent away for longer
    fail, some after calls were answered, and those calls are taken back, as ``bench.quota``
    takes them back."""
    profile = ARRIVAL_PROFILES["azure"]
    tally = simulate(CellSpec(profile, 10_000, 10, 30.0, 120.0, total_budget_s=2.0))
    assert tally.conversations_failed > 0
    assert tally.conversations_done > 0
    start, end = tally.window
    answered = [(at + LATENCY_MS / 1000.0, charge) for at, charge in tally.kept]
    in_window = [charge for t, charge in answered if start <= t <= end]
    assert tally.useful_calls == len(in_window)
    assert tally.useful_tokens == sum(in_window)


def test_a_seed_replays_exactly_and_another_seed_jitters_the_reschedules() -> None:
    spec = CellSpec(ARRIVAL_PROFILES["azure"], 10_000, 50, 12.0, 35.0)
    first, again = simulate(spec), simulate(spec)
    assert first.latencies == again.latencies
    assert first.kept == again.kept
    other = simulate(CellSpec(ARRIVAL_PROFILES["azure"], 10_000, 50, 12.0, 35.0, seed=2))
    assert other.kept != first.kept


def test_batch_workers_are_counted_in_their_own_lane_and_think_time_paces_users() -> None:
    """Ten interactive users thinking 0-10 s (mean 5 s) between conversations of 0.9 s can
    finish at most 10 x 60 / 5.9 ~ 100 in a minute on average, with or without 50 batch
    workers beside them; the batch workers' conversations are theirs."""
    profile = ARRIVAL_PROFILES["azure"]
    alone = simulate_lanes(CellSpec(profile, 210_000, 10, 15.0, 60.0, think_s=5.0))
    both = simulate_lanes(CellSpec(profile, 210_000, 10, 15.0, 60.0, think_s=5.0, batch_users=50))
    assert alone[BATCH].http_calls == 0
    for run in (alone, both):
        assert 60 <= run[INTERACTIVE].conversations_done <= 130
    assert both[BATCH].conversations_done > 50
    assert max(both[BATCH].latencies) > 10 * max(both[INTERACTIVE].latencies)


@pytest.mark.parametrize("profile", sorted(ARRIVAL_PROFILES))
def test_the_replayed_forced_429_is_refused_uncharged_and_costs_the_next_minute_little(
    profile: str,
) -> None:
    """The replay's ``fault_at`` answers one call as the simulator answers ``x-sim-fault: 429``:
    a 429 (counted in the window), nothing charged. Azure's documentation says a 429 asks the
    client to wait its ``retry-after`` and try again
    (https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate
    limits"), so one at saturation, with room on the server, costs the minute after it at most
    a few per cent of the minute before (the issue's stray-429 scenario)."""
    accounting = ARRIVAL_PROFILES[profile]
    inject, span = 75.0, 60.0
    plain = simulate(CellSpec(accounting, 10_000, 50, inject, span))
    spec = CellSpec(accounting, 10_000, 50, inject, span, fault_at=inject)
    faulted = simulate(spec)
    assert plain.throttled == 0
    assert faulted.throttled == 1
    before, after = around(faulted, inject, span, per_call=stray_per_call(accounting, 10_000))
    assert before > 0
    assert after >= 0.95 * before


def test_where_the_request_windows_bind_the_stray_figures_count_calls_not_their_tokens() -> None:
    """The independent rate-limit model the issue describes (``maxtokens-minute``, as
    ``devhost.simulator.accounting`` takes it from that description) allows ceil(TPM / 1,000)
    requests per 10 s and charges ``max_tokens`` only, so at 10,000 TPM its request windows bind
    (60 calls a minute, where its tokens would allow 120). The server then admits a steady
    number of calls, and the tokens of a minute say only which of the conversation's calls
    (40, 60 or 150 tokens) it held: with no 429 at all, two successive minutes differ by more
    than a tenth in tokens and not at all in calls."""
    accounting = ARRIVAL_PROFILES["maxtokens-minute"]
    assert stray_per_call(accounting, 10_000)
    assert not stray_per_call(ARRIVAL_PROFILES["azure"], 10_000)
    inject, span = 75.0, 60.0
    plain = simulate(CellSpec(accounting, 10_000, 50, inject, span, seed=10))
    assert plain.throttled == 0
    tokens_before, tokens_after = around(plain, inject, span)
    calls_before, calls_after = around(plain, inject, span, per_call=True)
    assert abs(tokens_after / tokens_before - 1.0) > 0.1
    assert calls_after == pytest.approx(calls_before, rel=0.02)


def test_spread_sizes_stay_within_the_spread_and_a_spread_of_0_draws_nothing() -> None:
    rng = random.Random(3)
    assert spread_size(150, 60, 0.0, rng) == (150, 60)
    assert rng.random() == random.Random(3).random()  # nothing was drawn
    drawn = [spread_size(150, 60, 0.2, rng) for _ in range(200)]
    assert all(120 <= p <= 180 and 48 <= m <= 72 for p, m in drawn)
    assert all(abs(p / 150 - m / 60) < 0.02 for p, m in drawn)  # one factor for both
    assert len(set(drawn)) > 20


def test_a_size_spread_draws_each_calls_size_once_and_the_server_charges_it() -> None:
    """``size_spread`` scales a call's prompt and ``max_tokens`` by one factor within the
    spread; the simulator's Azure limiter charges prompt + ``max_tokens`` of what was drawn
    (https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate
    limits"), so every charge lies within the spread of its call's and they vary. A spread of
    0 leaves the cell as it was."""
    fixed = {p + m for _, p, m in CALLS}
    plain = simulate(CellSpec(ARRIVAL_PROFILES["azure"], 10_000, 10, 12.0, 60.0))
    assert {charge for _, charge in plain.kept} == fixed
    spread = simulate(CellSpec(ARRIVAL_PROFILES["azure"], 10_000, 10, 12.0, 60.0, size_spread=0.3))
    charges = [charge for _, charge in spread.kept]
    assert len(set(charges)) > 10
    assert all(0.7 * min(fixed) - 1 <= c <= 1.3 * max(fixed) + 1 for c in charges)
    assert spread.throttled == 0
