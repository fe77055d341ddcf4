"""devhost's view of the Function App: introspection, host.json, %SETTING% resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.appmodel import (
    BLOB,
    EVENT_HUB,
    HTTP,
    SERVICE_BUS,
    HostOptions,
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
