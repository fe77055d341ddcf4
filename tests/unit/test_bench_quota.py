"""The bench's ideal packing bound: the fullest mean window whole calls in a conversation's
proportions allow, checked against cases worked by hand."""

from __future__ import annotations

import pytest

from bench.quota import ideal_packing, packing
from devhost.simulator.accounting import PROFILES

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
