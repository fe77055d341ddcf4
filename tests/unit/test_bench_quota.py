"""The quota bench's arithmetic: the ideal packing bound (the fullest mean window whole calls in
a conversation's proportions allow, checked against cases worked by hand) and its measure of
goodput (what the server's window held, checked against the simulator's own readings)."""

from __future__ import annotations

import pytest

from bench.packing_bound import fullest_mean_window, fullest_repeating_window
from bench.packing_sim import central
from bench.quota import ideal_packing, packing, settled
from bench.quota_load import CALLS, LATENCY_MS, Plan, Tally, conversation_charge, quota_bound
from devhost.simulator.accounting import AZURE, PROFILES
from devhost.simulator.ratelimit import DeploymentLimiter

GUARD = 10.0 / 10.1  # the limiter holds charges 0.1 s past a 10 s window


def test_one_kind_of_call_fills_a_window_with_as_many_whole_calls_as_fit() -> None:
    # Three identical calls of 300 tokens against 1,666 per window: five fit, 1,500 of 1,666.
    calls = (("intent", 100, 200),) * 3
    assert ideal_packing(PROFILES["azure"], 10_000, "tpm", calls) == pytest.approx(
        1_500 / 1_666 * GUARD
    )


def test_two_kinds_mixed_over_windows_beat_any_single_window_in_proportion() -> None:
    # Calls of 500 and 700 in equal numbers, 1,666 per window. Alone in proportion: one of
    # each, 1,200. Mixing {500, 500, 500} (1,500) and {700, 700} (1,400) with weights giving
    # equal mean counts (2/5 and 3/5: 1.2 calls of each) holds 1,440 on average.
    calls = (("intent", 200, 300), ("response", 300, 400))
    assert ideal_packing(PROFILES["azure"], 10_000, "tpm", calls) == pytest.approx(
        1_440 / 1_666 * GUARD
    )


def test_the_ideal_bound_is_above_first_come_and_below_a_full_window() -> None:
    azure = PROFILES["azure"]
    assert packing(azure, 10_000, "tpm") < ideal_packing(azure, 10_000, "tpm") < GUARD


def test_a_window_whose_mix_repeats_holds_whole_conversations_and_best_fit_settles_there() -> None:
    """A mix that repeats window after window admits each call at the rate of its count, so
    it holds whole conversations: two of 210 + 350 + 220 in 1,666 tokens (1,560, 0.936).
    The window is Azure's: a call charged prompt + ``max_tokens`` on arrival, TPM/6 per 10 s
    (https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate
    limits"; the simulator's ``devhost.simulator.ratelimit`` keeps it). The best-fit
    scheduler, which sees that window exactly, settles into that mix with closed-loop users;
    the mean over alternating mixes (the LP) is higher."""
    charges = [210, 350, 220]
    assert fullest_repeating_window(charges, 1_666) == pytest.approx(1_560 / 1_666)
    assert fullest_repeating_window([300, 300], 1_666) == pytest.approx(1_200 / 1_666)
    assert fullest_repeating_window([2_000], 1_666) == 0.0
    # 120 + 900 + 400: every full window that holds the 900 holds three 120s, so only a
    # window with room left over balances the calls.
    for calls in ([210, 350, 220], [500, 700], [300], [120, 900, 400]):
        assert fullest_repeating_window(calls, 1_666) <= fullest_mean_window(calls, 1_666) + 1e-9
    share, refused = central(10, best_fit=True, duration_s=300.0)
    assert refused == 0
    assert share == pytest.approx(1_560 / (10_000 / 6.0), abs=0.005)
    assert fullest_mean_window(charges, 1_666) > fullest_repeating_window(charges, 1_666) + 0.03


def test_calls_whose_sizes_vary_do_not_settle_into_one_mix() -> None:
    """With each call's size drawn within 10 % of the bench's, the best-fit scheduler is not
    held to the mix of whole conversations: the same Azure window (quota page as above) holds
    more than it."""
    fixed, _ = central(10, best_fit=True, duration_s=300.0)
    varied, refused = central(10, best_fit=True, duration_s=300.0, size_spread=0.1)
    assert refused == 0
    assert varied > fixed + 0.01
    assert varied > fullest_repeating_window([210, 350, 220], 1_666) * 1_666 / (10_000 / 6.0)


def test_a_call_counts_for_the_part_of_its_stay_in_the_server_window_inside_the_measure() -> None:
    tally = Tally((100.0, 135.0))
    tally.kept = [(110.0, 350), (95.0, 210), (130.0, 220), (50.0, 999)]
    # 350 whole (10 of 10 s inside), 210 half (105-110 s), 220 half (130-135 s), 999 none.
    expected = (350 * 10 + 210 * 5 + 220 * 5) / 10.0 / 35.0
    assert tally.held(10.0) == pytest.approx(expected)
    assert tally.held(10.0, per_call=True) == pytest.approx((10 + 5 + 5) / 10.0 / 35.0)


def test_what_the_window_held_is_the_mean_of_the_simulators_own_window_contents() -> None:
    """Calls admitted first-come by the simulator's Azure limiter (10,000 TPM) at saturation:
    ``Tally.held`` equals the time mean of the tokens the simulator itself reports in use,
    divided by the window, and so never exceeds the TPM."""
    now = 0.0
    server = DeploymentLimiter(tpm=10_000, rpm=60, clock=lambda: now, profile=AZURE)
    sizes = [210, 350, 220]
    admitted: list[tuple[float, int]] = []
    contents: list[float] = []
    step, i = 0.01, 0
    while now < 120.0:
        if server.try_acquire(sizes[i % 3]).admitted:
            admitted.append((now, sizes[i % 3]))
            i += 1
        if now >= 40.0:
            contents.append(1_666 - server.peek().remaining_tokens)
        now = round(now + step, 6)
    tally = Tally((40.0, 120.0))
    tally.kept = admitted
    mean_rate = sum(contents) / len(contents) / 10.0
    assert tally.held(10.0) == pytest.approx(mean_rate, rel=0.01)
    assert tally.held(10.0) <= 10_000 / 60.0


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_call_is_tallied_as_the_simulator_charged_it_and_when(name: str) -> None:
    """The bench counts what the server charged. The simulator's limiter is the judge: on
    arrival by size for ``azure`` and ``maxtokens-minute``, and for ``usage-minute`` the
    answer's ``total_tokens`` when it is answered (Azure API Management's
    ``azure-openai-token-limit``: remaining tokens "calculated using the actual token usage
    from the response of the model",
    https://learn.microsoft.com/azure/api-management/azure-openai-token-limit-policy)."""
    profile = PROFILES[name]
    now = 100.0
    server = DeploymentLimiter(tpm=210_000, rpm=1_260, clock=lambda: now, profile=profile)
    tally = Tally((0.0, 1_000.0), profile)
    latency = LATENCY_MS / 1000.0
    for prompt, max_tokens, used in ((150, 60, 190), (200, 150, 260), (180, 40, 200)):
        arrival = now
        decision = server.try_acquire(profile.charge_for(prompt, max_tokens))
        assert decision.admitted
        on_arrival = server.charge_for(profile.charge_for(prompt, max_tokens))
        now += latency
        on_answer = server.charge_usage(used)
        assert on_arrival + on_answer > 0
        at, charged = tally.charge(prompt, max_tokens, used, now)
        assert charged == on_arrival + on_answer
        assert at == pytest.approx(now if on_answer else arrival)
        tally.answers.append((now, charged))
        now += 1.0
    expected = 650 if profile.charged_on_answer else conversation_charge(profile)
    assert tally.conversation_charge() == pytest.approx(expected)


def test_a_usage_server_has_no_whole_call_packing_loss_and_its_bound_is_what_answers_used() -> None:
    """A usage-charging server admits a call while any room is left, so no whole call is
    left over at a window's end: both packing figures are the guard's alone. Its bound in
    conversations is the TPM over what a conversation used."""
    usage = PROFILES["usage-minute"]
    assert packing(usage, 10_000, "tpm") == pytest.approx(60.0 / 60.1)
    assert ideal_packing(usage, 10_000, "tpm") == pytest.approx(60.0 / 60.1)
    bound, by = quota_bound(usage, 210_000, charge=600.0)
    assert bound == pytest.approx(210_000 / 600 / 60)
    assert by == "tpm"
    # Before any answer the largest charge stands in: prompt + max_tokens of every call.
    assert Tally((0.0, 1.0), usage).conversation_charge() == sum(p + m for _, p, m in CALLS)


def test_a_cell_bound_by_a_minute_window_warms_up_for_a_whole_window() -> None:
    """Only where a token window longer than the warm-up binds is the warm-up lengthened: the
    60 s window of ``usage-minute``; not ``azure`` (10 s), not ``maxtokens-minute`` (its
    requests bind), not a cell the users' own loop binds."""
    plan = Plan(210_000, (3, 50), warmup_s=12.0, measure_s=20.0)
    assert settled(plan, PROFILES["usage-minute"], 50).warmup_s == 62.0
    assert settled(plan, PROFILES["usage-minute"], 3) == plan  # the loop binds
    assert settled(plan, PROFILES["azure"], 50) == plan
    assert settled(plan, PROFILES["maxtokens-minute"], 50) == plan
