"""The code, its bindings, the Bicep, the KEDA manifests and the local settings sample agree.

Each check lives in ``infra/checks/`` (``infra/consistency.py`` runs them all) and returns
problems as sentences. The tests run it on the repository (expecting none) and on deliberately
broken copies (expecting the problem named), so a check that stopped looking would fail here too.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra import bicep_scan as b  # noqa: E402
from infra import consistency as c  # noqa: E402
from infra import topics  # noqa: E402
from shared.config import SETTINGS, Kind, Settings, SettingSpec, Where  # noqa: E402
from shared.domain.messages import Stage  # noqa: E402
from tests.support.hooks import load_postdeploy_hook  # noqa: E402

INFRA = REPO / "infra"


hook = load_postdeploy_hook()


# ----------------------------------------------------------------------------------------------
# Fixtures: the repository's artefacts, read once
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> c.InfraModel:
    return c.InfraModel.load(INFRA)


@pytest.fixture(scope="module")
def deployed(model: c.InfraModel) -> c.Deployed:
    names, problems = c.deployed_names(model)
    assert problems == []
    return names


@pytest.fixture(scope="module")
def names() -> dict[str, Any]:
    loaded: dict[str, Any] = c.load_json(INFRA / "names.json")
    return loaded


@pytest.fixture(scope="module")
def sample() -> dict[str, str]:
    values: dict[str, str] = c.load_json(REPO / "local.settings.sample.json")["Values"]
    return values


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    loaded: dict[str, Any] = c.load_json(REPO / "host.json")
    return loaded


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    loaded: dict[str, Any] = c.load_json(REPO / "scale.json")
    return loaded


@pytest.fixture(scope="module")
def keda() -> list[dict[str, Any]]:
    return c.load_keda(INFRA / "keda")


@pytest.fixture(scope="module")
def bindings() -> list[c.Binding]:
    if not (REPO / "function_app.py").is_file():
        pytest.skip("function_app.py is not in the repository yet")
    return c.bindings_of(c.load_function_app(REPO))


def _problems_mentioning(problems: Sequence[str], *words: str) -> list[str]:
    return [problem for problem in problems if all(word in problem for word in words)]


# ----------------------------------------------------------------------------------------------
# 1. Settings the code reads
# ----------------------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_in_azure_and_listed_in_the_sample(
    model: c.InfraModel, sample: dict[str, str]
) -> None:
    problems = c.setting_problems(c.settings_read_by_code(REPO), model.app_settings, sample)
    assert problems == [], "\n".join(problems)


def test_settings_discovery_takes_every_row_of_the_settings_table_with_its_default() -> None:
    read = c.settings_read_by_code(REPO)
    for spec in SETTINGS:
        assert read[spec.name].default == spec.default, spec.name
    assert read["LLM_TIMEOUT_S"].default == Settings().llm.timeout_s


def test_a_new_row_in_the_table_must_be_set_in_azure_and_the_sample(
    model: c.InfraModel, sample: dict[str, str]
) -> None:
    table = (*SETTINGS, SettingSpec("QUEUE_NEW", Kind.NAME, "new"))
    read = c.settings_read_by_code(REPO, table=table)
    assert read["QUEUE_NEW"].default == "new"
    problems = c.setting_problems(read, model.app_settings, sample, table=table)
    assert _problems_mentioning(problems, "QUEUE_NEW", "infra/main.bicep")
    assert _problems_mentioning(problems, "QUEUE_NEW", "local.settings.sample.json")


def test_a_local_only_row_keeps_its_setting_out_of_azure_and_says_why() -> None:
    row = SettingSpec("X_PATH", Kind.TEXT, set_in=(Where.SAMPLE,), note="only for devhost")
    read = {"X_PATH": c.CodeSetting("X_PATH", "table")}
    assert not _problems_mentioning(
        c.setting_problems(read, set(), set(read), table=(row,)), "X_PATH"
    )
    problems = c.setting_problems(read, {"X_PATH"}, set(read), table=(row,))
    (problem,) = _problems_mentioning(problems, "X_PATH")
    assert "local-only (only for devhost)" in problem


def test_a_local_alternative_stays_out_of_azure_and_out_of_the_sample() -> None:
    """A connection string named exactly after a connection is what the Functions extensions
    use instead of its identity settings ("Connections", Azure Service Bus trigger for Azure
    Functions, https://learn.microsoft.com/azure/azure-functions/functions-bindings-service-bus-trigger#connections),
    so such a row is documented, never listed, not even empty."""
    row = SettingSpec("XConnection", Kind.SECRET, set_in=(Where.LOCAL_ALTERNATIVE,), note="alt")
    read = {"XConnection": c.CodeSetting("XConnection", "table")}
    assert not _problems_mentioning(c.setting_problems(read, set(), set(), table=(row,)), "XConn")
    (in_sample,) = _problems_mentioning(
        c.setting_problems(read, set(), {"XConnection"}, table=(row,)), "XConnection"
    )
    assert "must not list it" in in_sample
    (in_azure,) = _problems_mentioning(
        c.setting_problems(read, {"XConnection"}, set(), table=(row,)), "XConnection"
    )
    assert "local-only" in in_azure


def test_a_secret_in_azure_is_a_key_vault_reference() -> None:
    """A secret app setting is ``@Microsoft.KeyVault(SecretUri=...)`` (Use Key Vault references
    as app settings, https://learn.microsoft.com/azure/app-service/app-service-key-vault-references)."""
    vaulted = SettingSpec(
        "API_KEY", Kind.SECRET, set_in=(Where.BICEP, Where.KEY_VAULT, Where.SAMPLE), note="v"
    )
    plain = SettingSpec("OTHER_KEY", Kind.SECRET, set_in=(Where.SAMPLE,), note="local")
    reference = "'@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/api-key)'"
    assert c.secret_problems({"API_KEY": reference}, (vaulted, plain)) == []
    assert _problems_mentioning(
        c.secret_problems({"API_KEY": "'abc'"}, (vaulted,)), "API_KEY", "not to a Key Vault"
    )
    assert _problems_mentioning(
        c.secret_problems({"OTHER_KEY": reference}, (plain,)), "OTHER_KEY", "is a secret"
    )
    model = c.InfraModel.load(REPO / "infra")
    assert c.secret_problems(model.app_settings) == []


def test_settings_discovery_finds_environment_reads_of_every_form() -> None:
    source = """
import os
os.environ["A"]
os.environ.get("B")
os.getenv("C")
env["D"]
self._env.get("E")
if "F" in env: pass
settings.get("NOT_ENV")
"""
    found = {s.name for s in c.environ_reads(source)}
    assert found == {"A", "B", "C", "D", "E", "F"}


def test_settings_discovery_sees_the_real_config() -> None:
    read = c.settings_read_by_code(REPO)
    assert {f"LLM_DEPLOYMENT_{stage.name}" for stage in Stage} <= set(read)
    assert "ServiceBusConnection__fullyQualifiedNamespace" in read
    assert all(not name.startswith(c.DEVHOST_PREFIX) for name in read)


def test_a_setting_missing_from_the_bicep_is_reported(
    model: c.InfraModel, sample: dict[str, str]
) -> None:
    read = c.settings_read_by_code(REPO)
    without = {name: e for name, e in model.app_settings.items() if name != "QUEUE_INTENT"}
    problems = c.setting_problems(read, without, set(sample) | set(read))
    assert _problems_mentioning(problems, "QUEUE_INTENT", "infra/main.bicep")


def test_a_setting_missing_from_the_sample_is_reported(model: c.InfraModel) -> None:
    read = c.settings_read_by_code(REPO)
    sample = set(read) - {"LLM_TIMEOUT_S"}
    problems = c.setting_problems(read, set(model.app_settings) | set(read), sample)
    assert _problems_mentioning(problems, "LLM_TIMEOUT_S", "local.settings.sample.json")


@pytest.mark.parametrize("name", sorted(c.LOCAL_ONLY))
def test_a_local_only_setting_set_in_azure_is_reported_with_its_reason(
    model: c.InfraModel, name: str
) -> None:
    read = c.settings_read_by_code(REPO)
    bicep = set(model.app_settings) | {name}
    problems = c.setting_problems(read, bicep, set(read))
    (problem,) = _problems_mentioning(problems, name, "local-only")
    assert c.LOCAL_ONLY[name] in problem  # the report says why the setting stays out of Azure


def test_a_stale_allowlist_entry_is_reported() -> None:
    read = {"QUEUE_X": c.CodeSetting("QUEUE_X", "x.py:1")}
    problems = c.setting_problems(read, {"QUEUE_X"}, {"QUEUE_X"})
    assert _problems_mentioning(problems, "SQLITE_PATH", "no longer reads")


def _azure_environment(model: c.InfraModel, sample: dict[str, str]) -> dict[str, str]:
    """The app settings Azure gets. Values known only at deployment time (resource endpoints,
    the identity's client id) take the sample's value of the same setting, or a stand-in."""
    env: dict[str, str] = {}
    for name, expression in model.app_settings.items():
        known, value = b.try_evaluate(model.main, expression)
        if known:
            env[name] = str(value)
        elif sample.get(name):
            env[name] = sample[name]
        elif name.endswith(("Endpoint", "ENDPOINT", "Uri")):
            env[name] = "https://deployment-time.invalid/"
        else:
            env[name] = "deployment-time-value"
    return env


def test_the_azure_settings_pass_the_apps_own_validation(
    model: c.InfraModel, sample: dict[str, str], names: dict[str, Any]
) -> None:
    settings = Settings.from_env(_azure_environment(model, sample))
    assert settings.store_backend == "cosmos"
    assert set(settings.queues.all()) == set(names["serviceBus"]["queues"].values())
    assert settings.eventhub_consumer_group == names["eventHubs"]["consumerGroup"]
    _, timeout = model.setting_value("LLM_TIMEOUT_S")
    assert settings.llm.timeout_s == float(timeout)
    assert settings.llm.api_key is None
    assert settings.telemetry_exporter == "azuremonitor"


def test_quota_budgets_follow_the_deployed_capacity(model: c.InfraModel) -> None:
    capacities = {
        model.main.evaluate(
            model.main.params["openAiSmallDeploymentName"] or ""
        ): model.main.evaluate(model.main.params["openAiSmallCapacity"] or ""),
        model.main.evaluate(
            model.main.params["openAiLargeDeploymentName"] or ""
        ): model.main.evaluate(model.main.params["openAiLargeCapacity"] or ""),
    }
    known, tpm = model.setting_value("LLM_DEPLOYMENT_TPM")
    assert known
    parsed = {name: int(value) for name, value in (item.split("=") for item in tpm.split(","))}
    assert parsed == {name: capacity * 1000 for name, capacity in capacities.items()}


# ----------------------------------------------------------------------------------------------
# 2. Bindings and the resources they name
# ----------------------------------------------------------------------------------------------


def test_every_binding_names_a_resource_the_bicep_creates(
    bindings: list[c.Binding],
    sample: dict[str, str],
    model: c.InfraModel,
    deployed: c.Deployed,
    names: dict[str, Any],
) -> None:
    assert any(b.type == "serviceBusTrigger" for b in bindings)
    problems = c.binding_problems(
        bindings, sample, model, deployed, batch_function=names["functions"]["batchIngest"]
    )
    assert problems == [], "\n".join(problems)


def _app_with(decorate: Callable[[func.FunctionApp], None]) -> list[c.Binding]:
    app = func.FunctionApp()
    decorate(app)
    return c.bindings_of(app)


def _good_bindings(app: func.FunctionApp) -> None:
    @app.service_bus_queue_trigger(
        arg_name="msg", queue_name="%QUEUE_INTENT%", connection="ServiceBusConnection"
    )
    def intent_agent(msg: func.ServiceBusMessage) -> None: ...

    @app.event_hub_message_trigger(
        arg_name="events",
        event_hub_name="%EVENTHUB_NAME%",
        connection="EventHubConnection",
        consumer_group="%EVENTHUB_CONSUMER_GROUP%",
        cardinality="many",
    )
    def ingest(events: list[func.EventHubEvent]) -> None: ...

    @app.blob_trigger(
        arg_name="blob",
        path="%BATCH_CONTAINER%/{name}",
        connection="BatchStorage",
        source=func.BlobSource.EVENT_GRID,
    )
    def ingest_batch(blob: func.InputStream) -> None: ...


def test_a_correct_app_passes_the_binding_check(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    problems = c.binding_problems(
        _app_with(_good_bindings), sample, model, deployed, batch_function="ingest_batch"
    )
    assert problems == []


def test_a_queue_the_bicep_does_not_create_is_reported(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    def broken(app: func.FunctionApp) -> None:
        @app.service_bus_queue_trigger(
            arg_name="msg", queue_name="ghost", connection="ServiceBusConnection"
        )
        def ghost_agent(msg: func.ServiceBusMessage) -> None: ...

    problems = c.binding_problems(_app_with(broken), sample, model, deployed)
    assert _problems_mentioning(problems, "ghost_agent", "'ghost'")


def test_a_placeholder_without_a_setting_is_reported(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    def broken(app: func.FunctionApp) -> None:
        @app.service_bus_queue_trigger(
            arg_name="msg", queue_name="%QUEUE_NOWHERE%", connection="ServiceBusConnection"
        )
        def lost_agent(msg: func.ServiceBusMessage) -> None: ...

    problems = c.binding_problems(_app_with(broken), sample, model, deployed)
    assert _problems_mentioning(problems, "%QUEUE_NOWHERE%", "local.settings.sample.json")


def test_a_name_that_differs_between_the_sample_and_azure_is_reported(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    drifted = dict(sample, QUEUE_INTENT="intent-v2")
    problems = c.binding_problems(_app_with(_good_bindings), drifted, model, deployed)
    assert _problems_mentioning(problems, "%QUEUE_INTENT%", "'intent-v2'")


def test_a_connection_without_identity_settings_is_reported(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    def broken(app: func.FunctionApp) -> None:
        @app.event_hub_message_trigger(
            arg_name="events",
            event_hub_name="%EVENTHUB_NAME%",
            connection="OtherHubs",
            consumer_group="%EVENTHUB_CONSUMER_GROUP%",
        )
        def other_ingest(events: func.EventHubEvent) -> None: ...

    problems = c.binding_problems(_app_with(broken), sample, model, deployed)
    assert _problems_mentioning(problems, "OtherHubs__fullyQualifiedNamespace")


def test_an_event_grid_blob_trigger_the_hook_does_not_subscribe_is_reported(
    sample: dict[str, str], model: c.InfraModel, deployed: c.Deployed
) -> None:
    problems = c.binding_problems(
        _app_with(_good_bindings), sample, model, deployed, batch_function="renamed_batch_function"
    )
    assert _problems_mentioning(problems, "ingest_batch", "batchIngest")


def test_the_bicep_creates_every_name_in_names_json(
    deployed: c.Deployed, names: dict[str, Any]
) -> None:
    assert deployed.queues == set(names["serviceBus"]["queues"].values())
    assert deployed.hubs == {names["eventHubs"]["hub"]}
    assert deployed.consumer_groups == {names["eventHubs"]["consumerGroup"]}
    assert set(names["storage"].values()) <= deployed.containers
    assert deployed.cosmos_databases == {names["cosmos"]["database"]}
    assert deployed.cosmos_containers == {
        entry["name"]: entry["partitionKey"] for entry in names["cosmos"]["containers"].values()
    }


def test_a_module_that_stops_creating_queues_is_reported(model: c.InfraModel) -> None:
    service_bus = model.modules["modules/servicebus.bicep"]
    without_queues = b.BicepFile(
        service_bus.path,
        service_bus.text.replace(
            "'Microsoft.ServiceBus/namespaces/queues@", "'Microsoft.ServiceBus/namespaces/topics@"
        ),
    )
    broken = c.InfraModel(model.main, {**model.modules, "modules/servicebus.bicep": without_queues})
    _, problems = c.deployed_names(broken)
    assert _problems_mentioning(
        problems, "servicebus.bicep", "Microsoft.ServiceBus/namespaces/queues"
    )


def test_queue_names_computed_at_deployment_time_are_reported(model: c.InfraModel) -> None:
    main = b.BicepFile(
        model.main.path,
        model.main.text.replace(
            "queues: names.serviceBus.queues", "queues: serviceBus.outputs.queues"
        ),
    )
    _, problems = c.deployed_names(c.InfraModel(main, model.modules))
    assert _problems_mentioning(problems, "queues", "not statically known")


def test_cosmos_containers_have_the_partition_keys_the_store_uses(
    deployed: c.Deployed, names: dict[str, Any]
) -> None:
    containers = names["cosmos"]["containers"]
    settings = Settings(
        conversations_container=containers["conversations"]["name"],
        batches_container=containers["batches"]["name"],
        quota_container=containers["quota"]["name"],
    )
    assert dict(deployed.cosmos_containers) == settings.container_partition_keys


# ----------------------------------------------------------------------------------------------
# 3. Scale limits, locks and KEDA targets
# ----------------------------------------------------------------------------------------------


def test_flex_consumption_limits_and_hub_partitions_come_from_scale_json(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    problems = c.scale_problems(model, scale, c.project_python_version(REPO))
    assert problems == [], "\n".join(problems)


def test_a_scale_limit_that_drifts_from_scale_json_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    drifted = dict(scale, maximumInstanceCount=scale["maximumInstanceCount"] + 1)
    problems = c.scale_problems(model, drifted, c.project_python_version(REPO))
    assert _problems_mentioning(problems, "maximumInstanceCount")
    problems = c.scale_problems(model, scale, "3.12")
    assert _problems_mentioning(problems, "pythonVersion")


def _llm_time_limits(model: c.InfraModel) -> dict[str, float]:
    import shared.config as config

    read = c.settings_read_by_code(REPO)
    limits = {
        "the code's default LLM_TIMEOUT_S": float(str(read["LLM_TIMEOUT_S"].default)),
    }
    _, timeout = model.setting_value("LLM_TIMEOUT_S")
    _, wait = model.setting_value("LLM_WAIT_BUDGET_S")
    limits["Azure's LLM_TIMEOUT_S"] = float(timeout)
    limits["Azure's LLM_WAIT_BUDGET_S + LLM_TIMEOUT_S"] = float(wait) + float(timeout)
    limits["shared/config.py LLM_LOCK_BUDGET_S"] = float(config.LLM_LOCK_BUDGET_S)
    return limits


def _lock_durations(model: c.InfraModel) -> list[str]:
    service_bus = model.modules["modules/servicebus.bicep"]
    return [str(service_bus.evaluate(e)) for e in service_bus.property_values("lockDuration")]


def test_the_service_bus_lock_outlives_every_llm_time_limit(
    model: c.InfraModel, host: dict[str, Any]
) -> None:
    locks = _lock_durations(model)
    assert locks
    problems = c.lock_problems(locks, host, _llm_time_limits(model))
    assert problems == [], "\n".join(problems)


def test_a_lock_shorter_than_the_llm_timeout_is_reported(
    model: c.InfraModel, host: dict[str, Any]
) -> None:
    problems = c.lock_problems(["PT15S"], host, _llm_time_limits(model))
    assert _problems_mentioning(problems, "PT15S", "LLM_TIMEOUT_S")


def test_lock_renewal_shorter_than_the_lock_or_the_function_timeout_is_reported(
    host: dict[str, Any],
) -> None:
    short = copy.deepcopy(host)
    short["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"] = "00:00:30"
    problems = c.lock_problems(["PT1M"], short, {})
    assert _problems_mentioning(problems, "maxAutoLockRenewalDuration", "shorter than the lock")
    assert _problems_mentioning(problems, "functionTimeout")


def test_the_queue_policy_is_the_documented_one(model: c.InfraModel) -> None:
    """Every queue, the outcomes topic and its subscriptions keep the policy."""
    service_bus = model.modules["modules/servicebus.bicep"]

    def values(name: str, count: int) -> list[Any]:
        found = [service_bus.evaluate(e) for e in service_bus.property_values(name)]
        assert len(found) == count, name
        return found

    assert values("requiresDuplicateDetection", 2) == [True, True]
    assert values("deadLetteringOnMessageExpiration", 2) == [True, True]
    assert all(v >= 2 for v in values("maxDeliveryCount", 2))
    windows = values("duplicateDetectionHistoryTimeWindow", 2)
    assert all(c.iso_duration_seconds(v) >= 60 for v in windows)
    ttls = values("defaultMessageTimeToLive", 3)
    assert all(c.iso_duration_seconds(v) >= 86400 for v in ttls)


def test_the_outcomes_topic_is_declared_as_names_json_says(
    model: c.InfraModel, names: dict[str, Any]
) -> None:
    scale = c.load_json(REPO / "scale.json")
    assert topics.topic_problems(model, names, scale) == []
    subscriptions = names["serviceBus"]["topics"]["outcomes"]["subscriptions"]
    assert subscriptions["analytics"] is None
    assert subscriptions["delivery-chat"] == {"channel": "chat"}


def test_a_channel_or_team_without_a_subscription_is_reported(
    model: c.InfraModel, names: dict[str, Any]
) -> None:
    scale = c.load_json(REPO / "scale.json")
    broken = copy.deepcopy(names)
    subscriptions = broken["serviceBus"]["topics"]["outcomes"]["subscriptions"]
    del subscriptions["delivery-sms"]
    subscriptions["team-legal"] = {"team": "lawyers"}
    subscriptions["by-colour"] = {"colour": "red"}
    problems = topics.topic_problems(model, broken, scale)
    assert _problems_mentioning(problems, "channel 'sms'")
    assert _problems_mentioning(problems, "no team 'lawyers'")
    assert _problems_mentioning(problems, "team 'legal'")
    assert _problems_mentioning(problems, "'colour'")
    # main.bicep passes names.json's topic, so the broken copy no longer matches it either.
    assert _problems_mentioning(problems, "outcomesTopic")


def test_a_subscription_may_filter_on_any_property_an_outcome_message_carries(
    model: c.InfraModel, names: dict[str, Any]
) -> None:
    scale = c.load_json(REPO / "scale.json")
    extended = copy.deepcopy(names)
    subscriptions = extended["serviceBus"]["topics"]["outcomes"]["subscriptions"]
    subscriptions["urgent"] = {"priority": "urgent"}
    problems = topics.topic_problems(model, extended, scale)
    assert not _problems_mentioning(problems, "filters on 'priority'"), problems


def test_a_topic_policy_missing_from_scale_json_is_reported(
    model: c.InfraModel, names: dict[str, Any]
) -> None:
    scale = c.load_json(REPO / "scale.json")
    del scale["topics"]["subscriptionMaxDeliveryCount"]
    assert _problems_mentioning(topics.topic_problems(model, names, scale), "scale.json topics")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT1M", 60), ("PT10M", 600), ("P14D", 14 * 86400), ("PT1H30M", 5400), ("PT2.5S", 2.5)],
)
def test_iso_durations_convert_to_seconds(text: str, seconds: float) -> None:
    assert c.iso_duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:05:00", 300), ("1.00:00:01", 86401), ("00:00:00.80", 0.8)]
)
def test_timespans_convert_to_seconds(text: str, seconds: float) -> None:
    assert c.timespan_seconds(text) == seconds


@pytest.mark.parametrize("text", ["1M", "PT", "P", "five minutes"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        c.iso_duration_seconds(text)


def _triggered(bindings: list[c.Binding], sample: dict[str, str]) -> tuple[set[str], set[str]]:
    return c.sb_trigger_queues(bindings, sample), c.eh_trigger_hubs(bindings, sample)


def test_keda_targets_equal_host_json_and_limits_equal_scale_json(
    keda: list[dict[str, Any]],
    host: dict[str, Any],
    scale: dict[str, Any],
    model: c.InfraModel,
    deployed: c.Deployed,
    bindings: list[c.Binding],
    sample: dict[str, str],
) -> None:
    queues, hubs = _triggered(bindings, sample)
    assert queues
    assert hubs
    problems = c.keda_problems(keda, host, scale, model, deployed, queues, hubs)
    assert problems == [], "\n".join(problems)


def _keda_problems_after(
    change: Callable[[list[dict[str, Any]]], None],
    keda: list[dict[str, Any]],
    host: dict[str, Any],
    scale: dict[str, Any],
    model: c.InfraModel,
    deployed: c.Deployed,
) -> list[str]:
    documents = copy.deepcopy(keda)
    change(documents)
    queues = {"intent", "response", "critic", "escalation"}
    return c.keda_problems(documents, host, scale, model, deployed, queues, {"requests"})


def _scaled(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(
        d for d in documents if d["kind"] == "ScaledObject" and d["metadata"]["name"] == name
    )


def test_keda_drift_from_host_json_scale_json_and_bicep_is_reported(
    keda: list[dict[str, Any]],
    host: dict[str, Any],
    scale: dict[str, Any],
    model: c.InfraModel,
    deployed: c.Deployed,
) -> None:
    def args() -> tuple[Any, ...]:
        return (keda, host, scale, model, deployed)

    def message_count(docs: list[dict[str, Any]]) -> None:
        _scaled(docs, "switchboard-intent")["spec"]["triggers"][0]["metadata"]["messageCount"] = "5"

    def replicas(docs: list[dict[str, Any]]) -> None:
        _scaled(docs, "switchboard-critic")["spec"]["maxReplicaCount"] = 100

    def threshold(docs: list[dict[str, Any]]) -> None:
        _scaled(docs, "switchboard-ingest")["spec"]["triggers"][0]["metadata"][
            "unprocessedEventThreshold"
        ] = "1"

    def too_many_ingesters(docs: list[dict[str, Any]]) -> None:
        _scaled(docs, "switchboard-ingest")["spec"]["maxReplicaCount"] = (
            scale["eventHubPartitions"] + 1
        )

    def unknown_output(docs: list[dict[str, Any]]) -> None:
        _scaled(docs, "switchboard-intent")["spec"]["triggers"][0]["metadata"]["namespace"] = (
            "${NOT_AN_OUTPUT}"
        )

    def missing_scaler(docs: list[dict[str, Any]]) -> None:
        docs.remove(_scaled(docs, "switchboard-escalation"))

    def key_based_auth(docs: list[dict[str, Any]]) -> None:
        auth = next(d for d in docs if d["kind"] == "TriggerAuthentication")
        auth["spec"]["podIdentity"]["provider"] = "none"

    expectations = [
        (message_count, ("switchboard-intent", "maxConcurrentCalls")),
        (replicas, ("switchboard-critic", "maximumInstanceCount")),
        (threshold, ("switchboard-ingest", "maxEventBatchSize")),
        (too_many_ingesters, ("switchboard-ingest", "eventHubPartitions")),
        (unknown_output, ("NOT_AN_OUTPUT",)),
        (missing_scaler, ("'escalation'", "no KEDA ScaledObject")),
        (key_based_auth, ("azure-workload",)),
    ]
    for change, words in expectations:
        problems = _keda_problems_after(change, *args())
        assert _problems_mentioning(problems, *words), (change.__name__, problems)


# ----------------------------------------------------------------------------------------------
# azd wiring: azure.yaml, parameters, role ids, the postdeploy hook
# ----------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_the_app_azd_finds_by_its_service_tag(model: c.InfraModel) -> None:
    project = yaml.safe_load((REPO / "azure.yaml").read_text(encoding="utf-8"))
    [(service_name, service)] = project["services"].items()
    assert service == {"project": ".", "language": "python", "host": "function"}
    [call] = model.calls("modules/functionapp.bicep")
    assert model.main.evaluate(call.params["serviceName"]) == service_name
    function_module = model.modules["modules/functionapp.bicep"]
    assert "'azd-service-name': serviceName" in function_module.text
    for platform in ("posix", "windows"):
        command = project["hooks"]["postdeploy"][platform]["run"].split()
        assert (REPO / command[-1]).is_file()


def test_main_parameters_use_azd_substitution_for_every_required_parameter(
    model: c.InfraModel,
) -> None:
    parameters = c.load_json(INFRA / "main.parameters.json")["parameters"]
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert set(parameters) <= set(model.main.params)
    required = {name for name, default in model.main.params.items() if default is None}
    assert required <= set(parameters)


def test_the_resource_token_and_tags_are_azds(model: c.InfraModel) -> None:
    assert model.main.vars["resourceToken"].replace(" ", "") == (
        "toLower(uniqueString(subscription().id,environmentName,location))"
    )
    assert "'azd-env-name': environmentName" in model.main.vars["tags"]


# The built-in role ids as the Azure built-in roles reference lists them, checked here against
# infra/roles.json so a typo in either copy fails.
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Account Contributor": "17d1049b-9a84-46fb-8f53-869881c3d3ab",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}


def test_role_ids_are_the_built_in_ones_and_every_referenced_role_exists(
    model: c.InfraModel,
) -> None:
    import re

    roles = c.load_json(INFRA / "roles.json")
    assert roles["azureRoles"] == BUILT_IN_ROLES
    assert roles["cosmosSqlRoles"] == {
        "Cosmos DB Built-in Data Contributor": "00000000-0000-0000-0000-000000000002"
    }
    referenced = set(re.findall(r"roles\['([^']+)'\]", model.main.text))
    assert referenced
    assert referenced <= set(roles["azureRoles"])
    cosmos = model.modules["modules/cosmos.bicep"]
    assert cosmos.evaluate("dataContributorRoleId") in roles["cosmosSqlRoles"].values()


# ----------------------------------------------------------------------------------------------
# Roles as documented (infra/checks/roles.py DOCUMENTED_ROLES)
# ----------------------------------------------------------------------------------------------


def _grants(model: c.InfraModel) -> list[c.Grant]:
    grants, problems = c.role_grants(model)
    assert problems == [], "\n".join(problems)
    return grants


def _role_problems_after(model: c.InfraModel, old: str, new: str) -> list[str]:
    assert old in model.main.text, old
    main = b.BicepFile(model.main.path, model.main.text.replace(old, new))
    broken = c.InfraModel(main, model.modules)
    grants, problems = c.role_grants(broken)
    return problems + c.role_problems(grants, c.role_ids(INFRA))


def test_the_bicep_grants_exactly_the_documented_roles(model: c.InfraModel) -> None:
    problems = c.role_problems(_grants(model), c.role_ids(INFRA))
    assert problems == [], "\n".join(problems)


def test_every_documented_role_names_its_id_its_reason_and_its_doc() -> None:
    cosmos = c.load_json(INFRA / "roles.json")["cosmosSqlRoles"]
    for entry in c.DOCUMENTED_ROLES:
        assert entry.role_id == {**BUILT_IN_ROLES, **cosmos}[entry.grant.role], entry
        assert entry.doc.startswith("https://"), entry
        assert entry.why, entry


def test_the_app_holds_the_documented_storage_roles_per_account_and_container(
    model: c.InfraModel,
) -> None:
    app = {(g.role, g.scope) for g in _grants(model) if g.principal == "app"}
    # AzureWebJobsStorage: host only, the blob trigger's "All of" three, diagnostic events.
    assert {
        ("Storage Blob Data Owner", "hostStorage account"),
        ("Storage Queue Data Contributor", "hostStorage account"),
        ("Storage Account Contributor", "hostStorage account"),
        ("Storage Table Data Contributor", "hostStorage account"),
    } <= app
    # The blob trigger's connection: Blob Data Owner on the watched container, Queue Data
    # Contributor (poison queue) on the account; nothing wider.
    assert ("Storage Blob Data Owner", "batchStorage container 'batches'") in app
    assert ("Storage Queue Data Contributor", "batchStorage account") in app
    assert not {role for role, scope in app if scope == "batchStorage account"} - {
        "Storage Queue Data Contributor"
    }


def test_the_service_bus_trigger_roles_end_at_the_triggered_queues(model: c.InfraModel) -> None:
    grants = _grants(model)
    app = {(g.role, g.scope, g.condition) for g in grants if g.principal == "app"}
    assert ("Azure Service Bus Data Receiver", "serviceBus triggered queues", None) in app
    # Data Owner is kept (queue length for scaling needs manage rights), per queue and switchable.
    assert (
        "Azure Service Bus Data Owner",
        "serviceBus triggered queues",
        "serviceBusScaleOnQueueLength",
    ) in app
    namespace = {role for role, scope, _ in app if scope == "serviceBus namespace"}
    assert namespace == {"Azure Service Bus Data Sender"}
    assert all(g.scope != "serviceBus namespace" for g in grants if g.principal == "keda")


def test_the_trigger_queue_list_matches_the_service_bus_triggers(
    names: dict[str, Any], bindings: list[c.Binding], sample: dict[str, str]
) -> None:
    triggered = c.sb_trigger_queues(bindings, sample)
    assert c.triggered_queue_problems(names, triggered) == []
    with_deadletter = copy.deepcopy(names)
    with_deadletter["serviceBus"]["triggeredQueues"].append("deadletter")
    assert _problems_mentioning(
        c.triggered_queue_problems(with_deadletter, triggered), "'deadletter'", "no Service Bus"
    )
    without_critic = copy.deepcopy(names)
    without_critic["serviceBus"]["triggeredQueues"].remove("critic")
    assert _problems_mentioning(
        c.triggered_queue_problems(without_critic, triggered), "'critic'", "no receive rights"
    )


def test_role_drift_from_the_documentation_is_reported(model: c.InfraModel) -> None:
    table = "        union(app, { roleDefinitionId: roles['Storage Table Data Contributor'] })\n"
    expectations = [
        # A documented role dropped: named with its reason and doc.
        (table, "", ("does not grant app", "Storage Table Data Contributor", "learn.microsoft")),
        # The trigger's Blob Data Owner widened from the container to the account.
        (
            "roles['Storage Blob Data Owner'], container: names.storage.batchContainer }",
            "roles['Storage Blob Data Owner'] }",
            ("grants app", "'Storage Blob Data Owner' on batchStorage account"),
        ),
        # Data Owner back on the namespace.
        (
            "union(app, { roleDefinitionId: roles['Azure Service Bus Data Sender'] })",
            "union(app, { roleDefinitionId: roles['Azure Service Bus Data Owner'] })",
            ("grants app", "'Azure Service Bus Data Owner' on serviceBus namespace"),
        ),
        # Data Owner made unconditional.
        (
            "serviceBusScaleOnQueueLength\n        ? [",
            "true\n        ? [",
            ("(if true)", "Azure Service Bus Data Owner"),
        ),
        # A principal the checks do not know.
        (
            "principalId: kedaPrincipalId\n              principalType: 'ServicePrincipal'\n"
            "              roleDefinitionId: roles['Azure Service Bus Data Owner']",
            "principalId: someoneElse\n              principalType: 'ServicePrincipal'\n"
            "              roleDefinitionId: roles['Azure Service Bus Data Owner']",
            ("someoneElse", "not one it knows"),
        ),
        # A role reference outside the module params the checks read.
        (
            "var tags = {",
            "var stray = roles['Storage Blob Data Owner']\nvar tags = {",
            ("refers to roles[...]",),
        ),
    ]
    for old, new, words in expectations:
        problems = _role_problems_after(model, old, new)
        assert _problems_mentioning(problems, *words), (old, problems)


def test_a_role_id_that_drifts_from_the_built_in_one_is_reported(model: c.InfraModel) -> None:
    ids = dict(c.role_ids(INFRA), **{"Storage Account Contributor": "not-the-id"})
    problems = c.role_problems(_grants(model), ids)
    assert _problems_mentioning(problems, "Storage Account Contributor", "17d1049b")


def test_a_module_that_stops_scoping_roles_where_the_checks_expect_is_reported(
    model: c.InfraModel,
) -> None:
    path = "modules/eventhubs.bicep"
    module = model.modules[path]
    widened = b.BicepFile(module.path, module.text.replace("scope: hub", "scope: namespace"))
    _, problems = c.role_grants(c.InfraModel(model.main, {**model.modules, path: widened}))
    assert _problems_mentioning(problems, "eventhubs.bicep", "scope: hub")


def test_the_hook_reads_only_values_azd_provides(model: c.InfraModel) -> None:
    # azd sets AZURE_SUBSCRIPTION_ID itself; everything else is an output of main.bicep.
    assert set(hook.REQUIRED_ENV) - {"AZURE_SUBSCRIPTION_ID"} <= set(model.main.outputs)


def _hook_env(model: c.InfraModel) -> dict[str, str]:
    env = {name: f"value-of-{name.lower()}" for name in hook.REQUIRED_ENV}
    env["AZURE_FUNCTION_APP_HOSTNAME"] = "func-abc.azurewebsites.net"
    return env


class FakeAz:
    """Answers ``az rest`` like ARM: host keys (after ``key_after`` tries) and the PUT."""

    def __init__(self, *, key: str, key_after: int = 1, put_failures: int = 0) -> None:
        self.key = key
        self.key_after = key_after
        self.put_failures = put_failures
        self.calls: list[list[str]] = []
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, args: Sequence[str]) -> str:
        self.calls.append(list(args))
        if "post" in args:
            posts = sum(1 for call in self.calls if "post" in call)
            system_keys = {"blobs_extension": self.key} if posts >= self.key_after else {}
            return json.dumps({"masterKey": "m", "systemKeys": system_keys})
        body_file = args[args.index("--body") + 1].removeprefix("@")
        self.bodies.append(json.loads(Path(body_file).read_text(encoding="utf-8")))
        if self.put_failures:
            self.put_failures -= 1
            raise hook.CommandFailed("'az rest' failed: Webhook validation handshake failed")
        return "{}"


def test_the_hook_subscribes_the_batches_container_to_the_blob_trigger(
    model: c.InfraModel, names: dict[str, Any]
) -> None:
    az = FakeAz(key="k3y", key_after=3, put_failures=1)
    pauses: list[float] = []
    target = hook.ensure_subscription(_hook_env(model), names, az, sleep=pauses.append)
    [body, retried] = az.bodies
    assert body == retried
    properties = body["properties"]
    container = names["storage"]["batchContainer"]
    assert (
        properties["filter"]["subjectBeginsWith"]
        == f"/blobServices/default/containers/{container}/"
    )
    assert properties["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    url = properties["destination"]["properties"]["endpointUrl"]
    assert url == (
        "https://func-abc.azurewebsites.net/runtime/webhooks/blobs"
        f"?functionName=Host.Functions.{names['functions']['batchIngest']}&code=k3y"
    )
    dead_letter = properties["deadLetterWithResourceIdentity"]["deadLetterDestination"][
        "properties"
    ]
    assert dead_letter["blobContainerName"] == names["storage"]["eventGridDeadLetterContainer"]
    assert len(pauses) == 3  # two waits for the key, one after the refused PUT
    assert target.subscription_path.endswith(
        f"/eventSubscriptions/{names['functions']['batchSubscription']}?api-version={hook.EVENTGRID_API_VERSION}"
    )


def test_the_hook_names_every_missing_azd_value(names: dict[str, Any]) -> None:
    with pytest.raises(hook.HookError) as raised:
        hook.ensure_subscription({"AZURE_SUBSCRIPTION_ID": "s"}, names, FakeAz(key="k"))
    assert all(
        name in str(raised.value) for name in hook.REQUIRED_ENV if name != "AZURE_SUBSCRIPTION_ID"
    )


def test_the_hook_gives_up_clearly_when_the_key_never_appears(
    model: c.InfraModel, names: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    az = FakeAz(key="k", key_after=10**6)
    with pytest.raises(hook.HookError, match="no blobs_extension key"):
        hook.fetch_blobs_extension_key(
            hook.Target.from_env(_hook_env(model), names), az, attempts=3, sleep=lambda _: None
        )
    assert len(az.calls) == 3
    assert "attempt 3/3" in caplog.text


# ----------------------------------------------------------------------------------------------
# The Bicep scanner itself
# ----------------------------------------------------------------------------------------------


def test_the_scanner_ignores_braces_and_keywords_inside_strings_and_comments(
    tmp_path: Path,
) -> None:
    source = tmp_path / "x.bicep"
    source.write_text(
        "// var hidden = 'no'\n"
        "var shown = '{not an object} ${1 + 1}'\n"
        "/* module fake 'nope.bicep' = {} */\n"
        "var settings = {\n"
        "  A: 'a'  // trailing\n"
        "  'B-C': [\n"
        "    1\n"
        "    2\n"
        "  ]\n"
        "  D: flag\n"
        "    ? 'yes'\n"
        "    : 'no'\n"
        "}\n",
        encoding="utf-8",
    )
    bicep = b.BicepFile.load(source)
    assert set(bicep.vars) == {"shown", "settings"}
    assert bicep.modules == {}
    assert bicep.evaluate("shown") == "{not an object} 2"
    entries = bicep.object_var("settings")
    assert list(entries) == ["A", "B-C", "D"]
    assert bicep.evaluate(entries["B-C"]) == [1, 2]
    assert not b.try_evaluate(bicep, entries["D"])[0]


def test_the_evaluator_reads_json_files_and_refuses_what_it_cannot_know(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text(json.dumps({"a": {"b-c": [1, 2]}}), encoding="utf-8")
    source = tmp_path / "x.bicep"
    source.write_text(
        "param p string\n"
        "param q int = 3\n"
        "var data = loadJsonContent('data.json')\n"
        "var n = q * 1000\n",
        encoding="utf-8",
    )
    bicep = b.BicepFile.load(source)
    assert bicep.evaluate("data.a['b-c']") == [1, 2]
    assert bicep.evaluate("n") == 3000
    with pytest.raises(b.Unresolved):
        bicep.evaluate("p")
    with pytest.raises(b.Unresolved):
        bicep.evaluate("data.a.missing")
    with pytest.raises(b.Unresolved):
        bicep.evaluate("module.outputs.name")
