"""devhost's view of the Function App: introspection, host.json, %SETTING% resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.appmodel import (
    BLOB,
    EVENT_HUB,
    EXPONENTIAL_BACKOFF,
    FIXED_DELAY,
    HTTP,
    SERVICE_BUS,
    FunctionSpec,
    HostOptions,
    RetryPolicy,
    load_app,
    parse_timespan,
    resolve,
)
from devhost.environment import Workdir, app_settings
from shared.errors import ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:05:00", 300.0), ("00:00:00.80", 0.8), ("1.02:00:00", 93600.0), ("00:01:30", 90.0)],
)
def test_timespans_parse_as_the_host_writes_them(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


def test_a_malformed_timespan_names_host_json() -> None:
    with pytest.raises(ConfigError, match=r"host\.json"):
        parse_timespan("5 minutes")


def test_host_options_come_from_host_json() -> None:
    options = HostOptions.from_file(ROOT / "host.json")
    data = json.loads((ROOT / "host.json").read_text())
    assert options.max_concurrent_calls == data["extensions"]["serviceBus"]["maxConcurrentCalls"]
    assert options.max_event_batch_size == data["extensions"]["eventHubs"]["maxEventBatchSize"]
    assert options.max_auto_lock_renewal_s == 300.0
    assert options.auto_complete_messages is True


def test_placeholders_resolve_through_settings_and_unknown_ones_fail() -> None:
    assert resolve("%QUEUE_INTENT%", {"QUEUE_INTENT": "intent-q"}) == "intent-q"
    assert resolve("%A%/{name}", {"A": "batches"}) == "batches/{name}"
    with pytest.raises(ConfigError) as caught:
        resolve("%MISSING%", {})
    assert caught.value.setting == "MISSING"


def test_devhost_sees_every_function_with_its_resolved_source(tmp_path: Path) -> None:
    settings = app_settings(Workdir(tmp_path), simulator_url="http://127.0.0.1:1")
    model = load_app(ROOT, settings)
    by_type = {
        t: sorted(f.name for f in model.of_type(t)) for t in (SERVICE_BUS, EVENT_HUB, BLOB, HTTP)
    }
    assert by_type[SERVICE_BUS] == [
        "critic_agent",
        "escalation_agent",
        "intent_agent",
        "response_agent",
    ]
    assert by_type[EVENT_HUB] == ["ingest"]
    assert by_type[BLOB] == ["ingest_batch"]
    assert model.by_name("intent_agent").source == "intent"
    assert model.by_name("ingest").source == "requests"
    assert model.by_name("ingest_batch").source == "batches"
    assert model.by_name("get_conversation").source == "conversations/{id}"


def test_devhost_settings_point_at_its_own_store_and_simulator(tmp_path: Path) -> None:
    settings = app_settings(
        Workdir(tmp_path),
        simulator_url="http://127.0.0.1:4242",
        environ={"OPENAI_BASE_URL": "http://elsewhere/v1", "QUEUE_INTENT": "mine"},
    )
    assert settings["STORE_BACKEND"] == "sqlite"
    assert settings["SQLITE_PATH"] == str(tmp_path / "store.sqlite3")
    assert settings["AZURE_OPENAI_ENDPOINT"] == "http://127.0.0.1:4242"
    assert "OPENAI_BASE_URL" not in settings
    assert settings["QUEUE_INTENT"] == "mine"  # the environment wins over the sample
    assert not any("<" in value for value in settings.values())  # placeholders dropped


def test_the_ingest_retry_policy_is_the_decorators(tmp_path: Path) -> None:
    settings = app_settings(Workdir(tmp_path), simulator_url="http://127.0.0.1:1")
    model = load_app(ROOT, settings)
    # functions/ingest.py: @bp.retry(strategy="exponential_backoff", max_retry_count="-1",
    # minimum_interval="00:00:01", maximum_interval="00:01:00") - without bound, so a store
    # outage holds the partition instead of checkpointing past acknowledged events.
    policy = model.by_name("ingest").retry
    assert policy == RetryPolicy(
        EXPONENTIAL_BACKOFF, -1, minimum_interval_s=1.0, maximum_interval_s=60.0
    )
    assert policy is not None
    assert not policy.bounded
    assert [f.name for f in model.functions if f.retry is not None] == ["ingest"]


def test_the_consumer_group_is_the_triggers_or_the_default(tmp_path: Path) -> None:
    settings = app_settings(Workdir(tmp_path), simulator_url="http://127.0.0.1:1")
    ingest = load_app(ROOT, settings).by_name("ingest")
    assert ingest.consumer_group == settings["EVENTHUB_CONSUMER_GROUP"]

    async def handler(events: object) -> None:
        return None

    bare = FunctionSpec("f", EVENT_HUB, {"type": EVENT_HUB, "eventHubName": "h"}, handler)
    assert bare.consumer_group == "$Default"


@pytest.mark.parametrize(
    ("setting", "policy"),
    [
        (
            {"strategy": "fixed_delay", "max_retry_count": "3", "delay_interval": "00:00:05"},
            RetryPolicy(FIXED_DELAY, 3, delay_interval_s=5.0),
        ),
        (  # function.json spelling
            {
                "strategy": "exponentialBackoff",
                "maxRetryCount": -1,
                "minimumInterval": "00:00:00.5",
                "maximumInterval": "00:00:10",
            },
            RetryPolicy(EXPONENTIAL_BACKOFF, -1, minimum_interval_s=0.5, maximum_interval_s=10.0),
        ),
    ],
)
def test_retry_settings_parse_in_either_spelling(
    setting: dict[str, object], policy: RetryPolicy
) -> None:
    assert RetryPolicy.from_setting("f", setting) == policy


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ({"strategy": "linear", "max_retry_count": "3"}, "strategy"),
        ({"strategy": "fixed_delay", "max_retry_count": "three"}, "max_retry_count"),
        ({"strategy": "fixed_delay", "max_retry_count": "-2", "delay_interval": "00:00:01"}, "-1"),
        ({"strategy": "fixed_delay", "max_retry_count": "3"}, "delay_interval"),
        (
            {"strategy": "exponential_backoff", "max_retry_count": "3", "minimum_interval": "1s"},
            "minimum_interval",
        ),
        (
            {
                "strategy": "exponential_backoff",
                "max_retry_count": "3",
                "minimum_interval": "00:01:00",
                "maximum_interval": "00:00:01",
            },
            "longer",
        ),
    ],
)
def test_a_malformed_retry_policy_names_its_function(
    setting: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        RetryPolicy.from_setting("ingest", setting)
    assert caught.value.setting == "retry policy of ingest"


def test_retry_delays_follow_the_strategy() -> None:
    exponential = RetryPolicy(
        EXPONENTIAL_BACKOFF, 8, minimum_interval_s=1.0, maximum_interval_s=60.0
    )
    assert [exponential.delay_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [exponential.exhausted(n) for n in (7, 8, 9)] == [False, True, True]
    fixed = RetryPolicy(FIXED_DELAY, 0, delay_interval_s=3.0)
    assert (fixed.delay_s(1), fixed.delay_s(5), fixed.exhausted(0)) == (3.0, 3.0, True)
    forever = RetryPolicy(FIXED_DELAY, -1, delay_interval_s=3.0)
    assert not forever.exhausted(10**6)
