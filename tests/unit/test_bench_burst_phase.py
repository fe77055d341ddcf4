"""The burst bench's quota-use figures, from sampled simulator counters."""

from __future__ import annotations

import pytest

from bench.burst_phase import PhaseResult, PhaseSpec
from devhost.scaler import ScaleLimits


def _result(drained_s: float | None) -> PhaseResult:
    spec = PhaseSpec("quota", 10, 1000.0, 60_000, ScaleLimits(), 600.0)
    result = PhaseResult(spec, [], burst_at=0.0, drained_s=drained_s)
    # 60,000 TPM is 1,000 tokens a second: a slow start, then the quota in full, then a tail.
    for t, charged, calls, throttled in (
        (0.0, 5_000, 10, 0),  # counters from before the burst
        (10.0, 10_000, 20, 0),
        (20.0, 20_000, 30, 1),
        (30.0, 30_000, 40, 1),
        (40.0, 32_000, 50, 1),
    ):
        counters = {"charged_tokens": charged, "requests": calls, "rate_limited": throttled}
        result.usage.append((t, {"gpt": counters}))
    return result


def test_quota_use_is_charged_tokens_over_what_the_tpm_allows_in_the_span() -> None:
    result = _result(drained_s=40.0)
    assert result.quota_use("gpt") == pytest.approx(27_000 / 40_000)
    # The middle 50 % (10 s to 30 s) leaves the ramp and the tail out.
    assert result.quota_use("gpt", middle=0.5) == pytest.approx(1.0)
    # Between samples the counters are read linearly.
    assert result.quota_use("gpt", middle=0.75) == pytest.approx((31_000 - 7_500) / 30_000)
    throttled, share = result.throttled_share("gpt")
    assert throttled == 1
    assert share == pytest.approx(1 / 40)


def test_an_undrained_burst_is_measured_to_its_last_sample() -> None:
    result = _result(drained_s=None)
    assert result.measured_s == 40.0
    assert result.quota_use("gpt") == pytest.approx(27_000 / 40_000)
    assert _result(drained_s=20.0).quota_use("gpt") == pytest.approx(15_000 / 20_000)
    empty = PhaseResult(result.spec, [], burst_at=0.0)
    assert empty.quota_use("gpt") is None
