"""The simulator's accounting profiles, per deployment, driven by a hand-moved clock."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from devhost.simulator import DeploymentLimits, LatencyModel, SimulatorConfig, create_app
from devhost.simulator.accounting import AZURE, MAXTOKENS_MINUTE, PROFILES, USAGE_MINUTE
from devhost.simulator.config import ConfigValueError
from devhost.simulator.ratelimit import DeploymentLimiter
from tests.support.clock import FakeClock


def limiter(clock: FakeClock, profile: Any, tpm: int = 10_000) -> DeploymentLimiter:
    return DeploymentLimiter(
        tpm=tpm, rpm=max(1, 6 * tpm // 1000), clock=lambda: clock(), profile=profile
    )


def test_the_profiles_charge_differently() -> None:
    assert AZURE.charge_for(200, 150) == 350
    assert MAXTOKENS_MINUTE.charge_for(200, 150) == 150
    assert USAGE_MINUTE.charge_for(200, 150) == 0  # charged when answered
    assert set(PROFILES) == {"azure", "maxtokens-minute", "usage-minute"}


def test_maxtokens_minute_keeps_a_sixty_second_token_window_of_the_whole_tpm() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, MAXTOKENS_MINUTE)
    assert lim.token_capacity == 10_000
    for _ in range(10):  # 10 x 1,000 in the first 10 s: the 10 s request allowance is 10
        assert lim.try_acquire(1_000).admitted
        clock.advance(1.0)
    clock.advance(5.0)  # t = 15 s: the requests have left their 10 s window, the tokens have not
    refused = lim.try_acquire(1)
    assert not refused.admitted
    assert refused.limited_by == "tokens"
    assert refused.retry_after_ms == 45_000  # the first charge (t = 0) leaves at t = 60
    assert refused.remaining_tokens == 0
    clock.advance(45.0)
    assert lim.try_acquire(1_000).admitted


def test_maxtokens_minute_allows_ceil_tpm_over_1000_requests_per_10_s_and_no_1_s_window() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, MAXTOKENS_MINUTE, tpm=10_500)
    admitted = [lim.try_acquire(1).admitted for _ in range(12)]
    assert admitted == [True] * 11 + [False]  # ceil(10,500 / 1000) = 11, all in the same instant
    clock.advance(10.0)
    assert lim.try_acquire(1).admitted


def test_maxtokens_minute_reports_what_is_left_of_the_minute() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, MAXTOKENS_MINUTE)
    first = lim.try_acquire(300)
    assert (first.remaining_tokens, first.remaining_requests) == (9_700, 59)
    clock.advance(30.0)  # outside any 10 s window, still inside the minute
    second = lim.try_acquire(200)
    assert (second.remaining_tokens, second.remaining_requests) == (9_500, 58)
    clock.advance(30.0)  # the first call has left the minute
    assert lim.peek().remaining_tokens == 9_800
    assert lim.peek().remaining_requests == 59


def test_usage_minute_charges_the_answers_usage_and_blocks_once_the_minute_is_spent() -> None:
    """API Management's ``azure-openai-token-limit`` with ``estimate-prompt-tokens="false"``
    (https://learn.microsoft.com/azure/api-management/azure-openai-token-limit-policy):
    remaining tokens come from "the actual token usage from the response", so a call may be
    sent that exceeds the limit, and then "all succeeding requests will be blocked by the
    policy until the token limit frees up again"."""
    clock = FakeClock(1000.0)
    lim = limiter(clock, USAGE_MINUTE)
    first = lim.try_acquire(USAGE_MINUTE.charge_for(400, 5_000))
    assert first.admitted
    assert first.remaining_tokens == 10_000  # nothing charged on arrival, whatever max_tokens
    clock.advance(1.0)
    assert lim.charge_usage(400 + 9_000) == 9_400  # the answer: prompt + completion
    assert lim.peek().remaining_tokens == 600
    clock.advance(1.0)
    # 600 tokens left: a call is admitted whatever it will use, and its usage overdraws.
    assert lim.try_acquire(0).admitted
    clock.advance(1.0)
    lim.charge_usage(1_000)
    refused = lim.try_acquire(0)
    assert not refused.admitted
    assert refused.limited_by == "tokens"
    assert refused.remaining_tokens == 0
    # Blocked until enough usage leaves the minute for the window not to be spent: the first
    # answer's 9,400 tokens, charged at t = 1, leave at t = 61.
    assert refused.retry_after_ms == 58_000
    clock.advance(58.0)
    assert lim.try_acquire(0).admitted
    assert lim.peek().remaining_tokens == 10_000 - 1_000


def test_usage_minute_counts_requests_at_arrival_and_not_the_answers() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, USAGE_MINUTE)
    for _ in range(10):  # ceil(10,000 / 1000) = 10 per 10 s
        assert lim.try_acquire(0).admitted
        lim.charge_usage(100)
    assert lim.peek().remaining_requests == 50  # six 10 s allowances a minute, less 10
    refused = lim.try_acquire(0)
    assert not refused.admitted
    assert refused.limited_by == "requests"


def test_only_a_usage_profile_charges_an_answer() -> None:
    clock = FakeClock(1000.0)
    for profile in (AZURE, MAXTOKENS_MINUTE):
        lim = limiter(clock, profile)
        assert lim.try_acquire(profile.charge_for(100, 100)).admitted
        before = lim.peek().remaining_tokens
        assert lim.charge_usage(150) == 0
        assert lim.peek().remaining_tokens == before


def test_azure_reports_the_ten_second_window() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, AZURE)
    first = lim.try_acquire(300)
    assert first.remaining_tokens == 1_666 - 300
    assert first.remaining_requests == 0  # the 1 s window holds one request at 10,000 TPM
    clock.advance(10.0)
    assert lim.peek().remaining_tokens == 1_666


def test_the_profile_can_change_at_runtime_keeping_the_history() -> None:
    clock = FakeClock(1000.0)
    lim = limiter(clock, AZURE)
    assert lim.try_acquire(1_000).admitted
    lim.profile = MAXTOKENS_MINUTE
    assert lim.peek().remaining_tokens == 9_000


def test_an_unknown_profile_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigValueError, match="accounting"):
        DeploymentLimits(tpm=10_000, accounting="nope")
    config = SimulatorConfig().merged(
        {"deployments": {"d": {"tpm": 10_000, "accounting": "maxtokens-minute"}}}
    )
    assert config.deployments["d"].accounting == "maxtokens-minute"
    assert SimulatorConfig.from_dict(config.to_dict()) == config


def _body(max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "where is my order " * 20}],
        "max_tokens": max_tokens,
    }


async def test_each_deployment_answers_with_its_own_profile_over_http() -> None:
    config = SimulatorConfig(
        api_key="k",
        deployments={
            "az": DeploymentLimits(tpm=10_000),
            "mm": DeploymentLimits(tpm=10_000, accounting="maxtokens-minute"),
            "um": DeploymentLimits(tpm=10_000, accounting="usage-minute"),
        },
        latency=LatencyModel(fixed_ms=0.0),
    )
    async with TestClient(TestServer(create_app(config))) as client:
        url = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"
        az = await client.post(url.format("az"), json=_body(100), headers={"api-key": "k"})
        mm = await client.post(url.format("mm"), json=_body(100), headers={"api-key": "k"})
        assert az.status == mm.status == 200
        prompt = (await az.json())["usage"]["prompt_tokens"]
        assert int(az.headers["x-ratelimit-remaining-tokens"]) == 1_666 - prompt - 100
        assert int(mm.headers["x-ratelimit-remaining-tokens"]) == 10_000 - 100
        # A second call within the second: Azure's 1 s request window refuses it with an exact
        # wait; the other profile's 10 s window has room.
        az2 = await client.post(url.format("az"), json=_body(100), headers={"api-key": "k"})
        assert az2.status == 429
        assert "retry-after-ms" in az2.headers
        # Fill the other profile's minute: a refusal carries whole seconds only.
        for _ in range(8):
            await client.post(url.format("mm"), json=_body(1_200), headers={"api-key": "k"})
        refused = await client.post(url.format("mm"), json=_body(1_200), headers={"api-key": "k"})
        assert refused.status == 429
        assert "retry-after-ms" not in refused.headers
        assert int(refused.headers["retry-after"]) >= 1
        # A gateway metering usage: the answer's headers count its prompt + completion.
        um = await client.post(url.format("um"), json=_body(100), headers={"api-key": "k"})
        assert um.status == 200
        usage = (await um.json())["usage"]
        assert int(um.headers["x-ratelimit-remaining-tokens"]) == 10_000 - usage["total_tokens"]


def test_the_command_line_picks_a_profile_per_deployment() -> None:
    from devhost.simulator.__main__ import build_parser, config_from_args

    args = ["--deployment", "a=10000:maxtokens-minute", "--deployment", "b=20000"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.deployments["a"] == DeploymentLimits(tpm=10_000, accounting="maxtokens-minute")
    assert config.deployments["b"].accounting == "azure"
    assert config.limits_for("other") is None  # --accounting alone adds no default deployment
    config = config_from_args(
        build_parser().parse_args(["--deployment", "c=5000", "--accounting", "maxtokens-minute"])
    )
    assert config.deployments["c"].accounting == "maxtokens-minute"
    assert config.limits_for("other") is None
    with pytest.raises(ConfigValueError, match="accounting"):
        config_from_args(build_parser().parse_args(["--deployment", "d=5000:nope"]))
