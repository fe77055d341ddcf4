"""The simulator over real HTTP on 127.0.0.1, driven by the real openai SDK and aiohttp."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import openai
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field, ValidationError

from devhost.simulator import (
    DeploymentLimits,
    Faults,
    LatencyModel,
    RunningSimulator,
    SimulatorConfig,
    estimate_prompt_tokens,
    run_simulator,
    start_simulator,
)
from shared.llm.strict_schema import to_strict_schema
from tests.support.clock import FakeClock

pytestmark = pytest.mark.integration

KEY = "test-key"
ADMIN_KEY = "test-admin-key"
API_VERSION = "2024-10-21"
REPO_ROOT = Path(__file__).resolve().parents[2]
REFUND = [
    {"role": "system", "content": "Classify the customer's message."},
    {"role": "user", "content": "I want my money back for order #1234"},
]
SMALL: dict[str, Any] = {"messages": REFUND, "max_tokens": 100}


class Intent(BaseModel):
    intent: Literal["order_status", "refund_request", "shipping_delay", "fraud_report", "other"]
    confidence: float = Field(ge=0, le=1)
    needs_human: bool
    summary: str


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": model.__name__,
            # The SDK's strict schema keeps pydantic's bounds; Azure refuses them (see below).
            "schema": to_strict_schema(to_strict_json_schema(model)),
            "strict": True,
        },
    }


def config(**changes: Any) -> SimulatorConfig:
    base = SimulatorConfig(
        api_key=KEY,
        admin_key=ADMIN_KEY,
        deployments={
            "chat": DeploymentLimits(tpm=6_000_000, model="gpt-4o-mini-2024-07-18"),
            "tiny": DeploymentLimits(tpm=6_000, rpm=600),
        },
        latency=LatencyModel(fixed_ms=0),
    )
    return SimulatorConfig(**{**base.__dict__, **changes})


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(config()) as running:
        yield running


@pytest.fixture
async def azure(sim: RunningSimulator) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_key=KEY, api_version=API_VERSION, max_retries=0, timeout=10
    )
    yield client
    await client.close()


@pytest.fixture
async def http(sim: RunningSimulator) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"api-key": KEY, "x-sim-admin-key": ADMIN_KEY}
    async with aiohttp.ClientSession(base_url=sim.base_url, headers=headers) as session:
        yield session


def azure_path(deployment: str) -> str:
    return f"/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"


async def test_the_azure_sdk_parses_a_structured_answer_with_usage_and_headers(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    raw = await azure.chat.completions.with_raw_response.create(
        model="chat", messages=REFUND, response_format=schema_format(Intent), max_tokens=200
    )
    completion = raw.parse()
    result = Intent.model_validate_json(completion.choices[0].message.content or "")
    assert result.intent == "refund_request"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == estimate_prompt_tokens(REFUND)
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-ratelimit-limit-tokens"] == "6000000"
    assert raw.headers["x-ratelimit-limit-requests"] == "36000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 1_000_000 - (
        usage.prompt_tokens + 200
    )
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 600 - 1
    assert raw.headers["x-request-id"] == raw.headers["apim-request-id"]


class PlainIntent(BaseModel):
    """Intent without bounds: the SDK's own strict schema of it is inside Azure's subset."""

    intent: Literal["order_status", "refund_request", "shipping_delay", "fraud_report", "other"]
    needs_human: bool
    summary: str


async def test_the_sdks_parse_helper_gets_a_typed_result(azure: openai.AsyncAzureOpenAI) -> None:
    completion = await azure.chat.completions.parse(
        model="chat", messages=REFUND, response_format=PlainIntent, max_completion_tokens=300
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, PlainIntent)
    assert parsed.intent == "refund_request"


@pytest.mark.parametrize("prefix", ["/openai/v1", "/v1"])
async def test_the_openai_v1_sdk_works_with_the_model_naming_the_deployment(
    sim: RunningSimulator, prefix: str
) -> None:
    async with openai.AsyncOpenAI(
        base_url=sim.base_url + prefix, api_key=KEY, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "My package is late, order ORD-5512"}],
            max_tokens=120,
        )
    content = completion.choices[0].message.content or ""
    assert "ORD-5512" in content
    assert completion.object == "chat.completion"
    assert (
        completion.prompt_filter_results[0]["content_filter_results"]["hate"]["filtered"] is False
    )  # type: ignore[attr-defined]


async def test_any_bearer_token_is_accepted_for_entra_id_clients(sim: RunningSimulator) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url,
        azure_ad_token_provider=lambda: "token-from-entra",
        api_version=API_VERSION,
        max_retries=0,
    ) as client:
        completion = await client.chat.completions.create(model="chat", messages=REFUND)
    assert completion.choices[0].message.content


async def test_a_wrong_key_gets_401_in_azures_shape(sim: RunningSimulator) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_key="wrong", api_version=API_VERSION, max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="chat", messages=REFUND)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "401"  # type: ignore[index]
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + azure_path("chat"), json={}) as response,
    ):
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "401"
        assert response.headers["x-request-id"]


async def test_only_the_key_is_a_valid_bearer_token_when_bearer_tokens_are_off() -> None:
    async with run_simulator(config(accept_bearer=False)) as sim:
        for key, works in ((KEY, True), ("another", False)):
            async with openai.AsyncOpenAI(
                base_url=sim.base_url + "/v1", api_key=key, max_retries=0
            ) as client:
                if works:
                    await client.chat.completions.create(model="chat", messages=REFUND)
                else:
                    with pytest.raises(openai.AuthenticationError):
                        await client.chat.completions.create(model="chat", messages=REFUND)


async def test_an_unknown_deployment_is_404_deployment_not_found(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await azure.chat.completions.create(model="nope", messages=REFUND)
    assert caught.value.body["code"] == "DeploymentNotFound"  # type: ignore[index]


async def test_default_limits_create_deployments_on_first_use() -> None:
    async with run_simulator(config(default_limits=DeploymentLimits(tpm=12_000))) as sim:
        async with (
            aiohttp.ClientSession(sim.base_url, headers={"api-key": KEY}) as http,
            http.post(azure_path("fresh"), json={"messages": REFUND}) as response,
        ):
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-tokens"] == "12000"
        assert "fresh" in sim.stats()["deployments"]


async def test_the_azure_route_requires_an_api_version(http: aiohttp.ClientSession) -> None:
    async with http.post(
        "/openai/deployments/chat/chat/completions", json={"messages": REFUND}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "MissingApiVersionParameter"


async def test_a_body_that_is_not_json_is_400(http: aiohttp.ClientSession) -> None:
    async with http.post(azure_path("chat"), data=b"{not json") as response:
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]


async def test_an_invalid_request_is_400_naming_the_parameter(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await azure.chat.completions.create(model="chat", messages=REFUND, max_tokens=-1)
    assert caught.value.param == "max_tokens"


async def test_a_schema_that_recurses_without_end_is_400(http: aiohttp.ClientSession) -> None:
    endless = {
        "$defs": {
            "A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"]}
        },
        "$ref": "#/$defs/A",
    }
    body = {
        "messages": REFUND,
        "max_tokens": 50,
        "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": endless}},
    }
    async with http.post(azure_path("chat"), json=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == "response_format"
    assert "recurses" in error["message"]


async def test_exceeding_the_token_quota_gets_429_with_exact_retry_headers() -> None:
    clock = FakeClock(500.0)
    sim = await start_simulator(config(), clock=clock)  # tiny: 1,000 tokens per 10 s
    try:
        async with aiohttp.ClientSession(sim.base_url, headers={"api-key": KEY}) as http:
            body = {"messages": REFUND, "max_tokens": 900}
            cost = estimate_prompt_tokens(REFUND) + 900
            async with http.post(azure_path("tiny"), json=body) as first:
                assert first.status == 200
                assert first.headers["x-ratelimit-remaining-tokens"] == str(1_000 - cost)
            clock.now += 2.0
            async with http.post(azure_path("tiny"), json=body) as refused:
                assert refused.status == 429
                error = (await refused.json())["error"]
                headers = refused.headers
            assert headers["retry-after-ms"] == "8000"
            assert headers["retry-after"] == "8"
            assert headers["x-ratelimit-remaining-tokens"] == str(1_000 - cost)
            assert headers["x-ratelimit-remaining-requests"] == "10"  # 1 s window: 10 of 10
            assert headers["x-ratelimit-limit-tokens"] == "6000"
            assert headers["x-ratelimit-limit-requests"] == "600"
            assert error["code"] == "429"
            assert f"API version {API_VERSION}" in error["message"]
            assert "token rate limit" in error["message"]
            assert "retry after 8 seconds" in error["message"]
            clock.now += 7.999
            async with http.post(azure_path("tiny"), json=body) as early:
                assert early.status == 429
                assert early.headers["retry-after-ms"] == "1"
            clock.now += 0.001
            async with http.post(azure_path("tiny"), json=body) as later:
                assert later.status == 200
        stats = sim.stats()["deployments"]["tiny"]
        assert stats["throttled"] == 2
        assert stats["succeeded"] == 2
    finally:
        await sim.stop()


async def test_the_sdk_sees_a_rate_limit_error_with_the_retry_headers() -> None:
    clock = FakeClock(500.0)  # both requests at the same instant: the first leaves in 10 s
    async with (
        run_simulator(config(), clock=clock) as sim,
        openai.AsyncAzureOpenAI(
            azure_endpoint=sim.base_url, api_key=KEY, api_version=API_VERSION, max_retries=0
        ) as client,
    ):
        await client.chat.completions.create(model="tiny", messages=REFUND, max_tokens=900)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="tiny", messages=REFUND, max_tokens=900)
    headers = caught.value.response.headers
    assert headers["retry-after-ms"] == "10000"
    assert headers["retry-after"] == "10"


async def test_a_forced_429_is_not_charged(http: aiohttp.ClientSession) -> None:
    headers = {"x-sim-fault": "429"}
    async with http.post(azure_path("tiny"), json={"messages": REFUND}, headers=headers) as forced:
        assert forced.status == 429
        assert forced.headers["retry-after-ms"] == "1000"
        assert forced.headers["retry-after"] == "1"
        assert forced.headers["x-ratelimit-remaining-tokens"] == "1000"


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", openai.InternalServerError), ("503", openai.InternalServerError)],
)
async def test_server_error_faults_answer_that_status(
    azure: openai.AsyncAzureOpenAI, fault: str, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        await azure.chat.completions.create(
            model="chat", messages=REFUND, extra_headers={"x-sim-fault": fault}
        )
    assert caught.value.status_code == int(fault)
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "6000000"


async def test_a_timeout_fault_lets_the_clients_timeout_fire() -> None:
    faults = Faults(timeout_s=30)
    async with run_simulator(config(faults=faults)) as sim:
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=sim.base_url,
            api_key=KEY,
            api_version=API_VERSION,
            max_retries=0,
            timeout=0.3,
        ) as client:
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(
                    model="chat", messages=REFUND, extra_headers={"x-sim-fault": "timeout"}
                )
            assert time.monotonic() - started < 5
        assert sim.stats()["deployments"]["chat"]["faults"] == {"timeout": 1}


async def test_a_malformed_fault_returns_content_that_is_not_json(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    completion = await azure.chat.completions.create(
        model="chat",
        messages=REFUND,
        response_format=schema_format(Intent),
        extra_headers={"x-sim-fault": "malformed"},
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content or "")


async def test_a_schema_fault_returns_json_that_breaks_the_schema(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    completion = await azure.chat.completions.create(
        model="chat",
        messages=REFUND,
        response_format=schema_format(Intent),
        extra_headers={"x-sim-fault": "schema"},
    )
    content = completion.choices[0].message.content or ""
    assert isinstance(json.loads(content), dict)
    with pytest.raises(ValidationError):
        Intent.model_validate_json(content)


async def test_a_prompt_content_filter_is_400_with_azures_inner_error(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await azure.chat.completions.create(
            model="chat", messages=REFUND, extra_headers={"x-sim-fault": "content_filter"}
        )
    assert caught.value.code == "content_filter"
    body: Any = caught.value.body
    assert body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert body["innererror"]["content_filter_result"]["hate"]["filtered"] is True


async def test_a_completion_content_filter_ends_with_that_finish_reason(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    completion = await azure.chat.completions.create(
        model="chat",
        messages=REFUND,
        extra_headers={"x-sim-fault": "content_filter_completion"},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.content_filter_results["violence"]["filtered"] is True  # type: ignore[attr-defined]


async def test_an_unknown_fault_header_is_400(http: aiohttp.ClientSession) -> None:
    async with http.post(
        azure_path("chat"), json={"messages": REFUND}, headers={"x-sim-fault": "meteor"}
    ) as response:
        assert response.status == 400
        assert "x-sim-fault" in (await response.json())["error"]["message"]


async def test_config_changes_take_effect_at_runtime(http: aiohttp.ClientSession) -> None:
    # Without max_tokens a request is charged 4,096 tokens: keep these small.
    patch = {"faults": {"error_rates": {"503": 1.0}}, "deployments": {"chat": {"tpm": 60_000}}}
    async with http.put("/_sim/config", json=patch) as response:
        assert response.status == 200
        assert (await response.json())["api_key"] == "***"
    async with http.post(azure_path("chat"), json=SMALL) as failing:
        assert failing.status == 503
        assert failing.headers["x-ratelimit-limit-tokens"] == "60000"
    async with http.put("/_sim/config", json={"faults": {"error_rates": {}}}) as response:
        assert response.status == 200
    async with http.post(azure_path("chat"), json=SMALL) as healthy:
        assert healthy.status == 200
    async with http.put("/_sim/config", json={"latency": {"fixed_ms": 300}}):
        pass
    started = time.monotonic()
    async with http.post(azure_path("chat"), json=SMALL) as slow:
        assert slow.status == 200
    assert time.monotonic() - started >= 0.3
    async with http.get("/_sim/config") as current:
        document = await current.json()
    assert document["latency"]["fixed_ms"] == 300
    assert document["deployments"]["chat"]["tpm"] == 60_000


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"faults": {"timeout_rate": 7}}, "timeout_rate"),
        ({"api_key": "stolen"}, "Credentials"),
        ({"mystery": 1}, "unknown setting"),
    ],
)
async def test_a_bad_config_change_is_refused_and_changes_nothing(
    http: aiohttp.ClientSession, patch: dict[str, Any], message: str
) -> None:
    async with http.put("/_sim/config", json=patch) as response:
        assert response.status == 400
        assert message in (await response.json())["error"]["message"]
    async with http.get("/_sim/config") as current:
        assert (await current.json())["faults"]["timeout_rate"] == 0


async def test_stats_count_requests_tokens_and_faults_until_reset(
    http: aiohttp.ClientSession, sim: RunningSimulator
) -> None:
    for fault in ("none", "500", "schema"):
        async with http.post(
            azure_path("chat"),
            json={"messages": REFUND, "response_format": schema_format(Intent)},
            headers={"x-sim-fault": fault},
        ):
            pass
    async with http.get("/_sim/stats") as response:
        stats = (await response.json())["deployments"]["chat"]
    assert stats["requests"] == 3
    assert stats["succeeded"] == 2
    assert stats["faults"] == {"500": 1, "schema": 1}
    assert stats["prompt_tokens"] == 2 * estimate_prompt_tokens(REFUND)
    assert stats["completion_tokens"] > 0
    assert stats["statuses"] == {"200": 2, "500": 1}
    async with http.post("/_sim/reset") as response:
        assert response.status == 200
    assert sim.stats()["deployments"]["chat"]["requests"] == 0


async def test_the_same_body_gets_the_same_content(http: aiohttp.ClientSession) -> None:
    body = {"messages": REFUND, "response_format": schema_format(Intent), "max_tokens": 300}
    answers = []
    for _ in range(2):
        async with http.post(azure_path("chat"), json=body) as response:
            answers.append(await response.json())
    assert answers[0]["choices"] == answers[1]["choices"]
    assert answers[0]["id"] != answers[1]["id"]


async def test_hundreds_of_concurrent_requests_are_served_together() -> None:
    async with run_simulator(config(latency=LatencyModel(fixed_ms=300))) as sim:
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(
            sim.base_url, headers={"api-key": KEY}, connector=connector
        ) as http:

            async def one(i: int) -> int:
                body = {
                    "messages": [{"role": "user", "content": f"order #{1000 + i}"}],
                    "max_tokens": 100,
                }
                async with http.post(azure_path("chat"), json=body) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(300)))
        assert statuses == [200] * 300
        assert sim.stats()["max_in_flight"] >= 100  # served together, not one after another


async def test_health_and_unknown_routes_answer_json(http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as response:
        assert (await response.json()) == {"status": "ok"}
    async with http.get("/openai/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "404"


async def test_the_cli_prints_its_url_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devhost.simulator",
        "--port",
        "0",
        "--tpm",
        "1000",
        "--api-key",
        KEY,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with (
            aiohttp.ClientSession(url, headers={"api-key": KEY}) as http,
            http.post(azure_path("any"), json={"messages": REFUND}) as response,
        ):
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- Azure's strict structured-output subset -------------------------------------------------
#
# The subset is Microsoft Learn's "How to use structured outputs with Azure OpenAI in Microsoft
# Foundry Models", "JSON Schema support and limitations" (shared/llm/strict_schema.py cites it).
# The 400 body is the one Azure OpenAI returned for a schema outside it, as quoted from a gpt-4o
# deployment in dottxt-ai/outlines#844 (2024-10-24): {"error": {"message": "Invalid schema for
# response_format 'default': In context=(), 'additionalProperties' is required to be supplied
# and to be false.", "type": "invalid_request_error", "param": "response_format", "code": null}}.


def bounded_schema_body(*, strict: bool) -> dict[str, Any]:
    """A request whose schema keeps pydantic's bounds (``minimum``/``maximum`` on confidence)."""
    return {
        **SMALL,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "Intent",
                "schema": to_strict_json_schema(Intent),
                "strict": strict,
            },
        },
    }


async def test_a_strict_schema_outside_the_subset_is_refused_as_azure_refuses_it(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(azure_path("chat"), json=bounded_schema_body(strict=True)) as response:
        assert response.status == 400
        body = await response.json()
    assert body == {
        "error": {
            "message": "Invalid schema for response_format 'Intent': In context=('properties', "
            "'confidence'), 'maximum' is not permitted.",
            "type": "invalid_request_error",
            "param": "response_format",
            "code": None,
        }
    }
    stats = sim.stats()["deployments"]["chat"]
    assert (stats["bad_requests"], stats["succeeded"], stats["charged_tokens"]) == (1, 0, 0)


async def test_the_same_schema_without_strict_is_answered(http: aiohttp.ClientSession) -> None:
    # The subset binds strict mode only (the service's own 400 text for a schema it cannot take
    # in strict mode suggests "use 'strict: false' to opt out of structured outputs").
    async with http.post(azure_path("chat"), json=bounded_schema_body(strict=False)) as response:
        assert response.status == 200
        content = (await response.json())["choices"][0]["message"]["content"]
    assert Intent.model_validate_json(content).intent == "refund_request"


async def test_the_sdks_parse_helper_with_a_bounded_model_gets_azures_400(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await azure.chat.completions.parse(
            model="chat", messages=REFUND, response_format=Intent, max_completion_tokens=300
        )
    assert caught.value.status_code == 400
    assert caught.value.code is None
    assert caught.value.param == "response_format"
    assert caught.value.type == "invalid_request_error"
    assert "'maximum' is not permitted." in caught.value.message


def _llm_settings(sim: RunningSimulator, **changes: Any) -> Any:
    from shared.config import LLMSettings, Secret
    from shared.domain.messages import Stage

    return LLMSettings(
        endpoint=sim.base_url,
        api_key=Secret(KEY),
        api_version=API_VERSION,
        deployments={stage: ("chat", "tiny") for stage in Stage},
        deployment_tpm={"chat": 6_000_000, "tiny": 6_000},
        timeout_s=10.0,
        wait_budget_s=5.0,
        breaker_failures=1,
        **changes,
    )


async def test_every_agents_request_is_accepted_by_the_strict_simulator(
    sim: RunningSimulator,
) -> None:
    from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
    from shared.agents import critic, escalation, intent, response
    from shared.domain.agent_input import AgentInput, Draft
    from shared.llm.guarded import GuardedChatModel
    from shared.llm.strict_schema import strict_schema_violations

    sent: list[dict[str, Any]] = []

    async def capture(request: Any) -> None:
        sent.append(json.loads(request.content))

    settings = _llm_settings(sim)
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url,
        api_key=KEY,
        api_version=API_VERSION,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [capture]}),
    )
    llm = GuardedChatModel(OpenAIChatEndpoint(settings, client=sdk), settings=settings)
    try:
        first = AgentInput(
            conversation_id="c-1",
            customer_id="cust-1",
            channel="email",
            text="I want my money back for order #1234, the kettle arrived broken.",
        )
        found = (await intent.classify_intent(first, llm=llm)).result
        later = AgentInput(**{**first.__dict__, "intent": found})
        reply = (await response.draft_reply(later, llm=llm)).result
        drafted = AgentInput(**{**later.__dict__, "drafts": (Draft(0, reply.reply),)})
        await critic.review_draft(drafted, llm=llm)
        await escalation.route_to_human(
            AgentInput(**{**drafted.__dict__, "escalation_reason": "legal threat"}), llm=llm
        )
    finally:
        await llm.close()
        await sdk.close()
    assert found.label.value == "refund_request"
    formats = [body["response_format"]["json_schema"] for body in sent]
    assert [f["name"] for f in formats] == [
        "IntentResult",
        "ResponseResult",
        "CriticResult",
        "EscalationResult",
    ]
    for spec in formats:
        assert spec["strict"] is True
        assert strict_schema_violations(spec["schema"]) == []
    assert sim.stats()["deployments"]["chat"]["bad_requests"] == 0


async def test_a_400_is_a_permanent_model_bad_request_sent_once_and_not_held_against_the_breaker(
    sim: RunningSimulator,
) -> None:
    from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
    from shared.errors import ModelRequestRejected, PermanentError
    from shared.llm.breaker import BreakerState
    from shared.llm.guarded import GuardedChatModel
    from shared.ports import ChatRequest

    settings = _llm_settings(sim)
    llm = GuardedChatModel(OpenAIChatEndpoint(settings), settings=settings)
    request = ChatRequest(
        stage="intent",
        messages=REFUND,
        schema_name="Intent",
        json_schema=to_strict_json_schema(Intent),  # keeps minimum/maximum: outside the subset
        max_tokens=100,
    )
    try:
        with pytest.raises(ModelRequestRejected) as caught:
            await llm.complete(request)
    finally:
        await llm.close()
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason_code == "ModelBadRequest"
    assert "HTTP 400" in caught.value.description
    assert "'maximum' is not permitted" in caught.value.description
    deployments = sim.stats()["deployments"]
    assert deployments["chat"]["requests"] == 1  # not retried...
    assert "tiny" not in deployments  # ...nor sent to the fallback
    # One failure would open a breaker set to open after one (breaker_failures=1).
    assert llm.breakers.for_deployment("chat").state is BreakerState.CLOSED


async def test_a_content_filter_400_is_still_content_filtered_not_a_bad_request(
    sim: RunningSimulator,
) -> None:
    from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
    from shared.errors import ContentFiltered
    from shared.llm.guarded import GuardedChatModel
    from shared.ports import ChatRequest

    async def filter_the_prompt(request: Any) -> None:
        request.headers["x-sim-fault"] = "content_filter"  # the 400 with code content_filter

    settings = _llm_settings(sim)
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url,
        api_key=KEY,
        api_version=API_VERSION,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [filter_the_prompt]}),
    )
    llm = GuardedChatModel(OpenAIChatEndpoint(settings, client=sdk), settings=settings)
    try:
        with pytest.raises(ContentFiltered):
            await llm.complete(
                ChatRequest(
                    stage="intent",
                    messages=REFUND,
                    schema_name="",
                    json_schema=None,
                    max_tokens=50,
                )
            )
    finally:
        await llm.close()
        await sdk.close()
    assert sim.stats()["deployments"]["chat"]["statuses"] == {"400": 1}
