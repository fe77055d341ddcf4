"""The Function App as the Functions host sees it, through azure.functions introspection."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.drive import indexed

SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
PLACEHOLDER = re.compile(r"%([^%]+)%")


@pytest.fixture(scope="module")
def bindings() -> dict[str, list[dict[str, Any]]]:
    return {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in indexed()}


def _trigger(bindings: list[dict[str, Any]]) -> dict[str, Any]:
    (trigger,) = [b for b in bindings if b["type"].endswith("Trigger")]
    return trigger


def test_every_function_is_registered_with_its_trigger(
    bindings: dict[str, list[dict[str, Any]]],
) -> None:
    triggers = {name: _trigger(b)["type"] for name, b in bindings.items()}
    assert triggers == {
        "ingest": "eventHubTrigger",
        "ingest_batch": "blobTrigger",
        "intent_agent": "serviceBusTrigger",
        "response_agent": "serviceBusTrigger",
        "critic_agent": "serviceBusTrigger",
        "escalation_agent": "serviceBusTrigger",
        "health": "httpTrigger",
        "ready": "httpTrigger",
        "get_conversation": "httpTrigger",
        "get_batch": "httpTrigger",
        "list_escalations": "httpTrigger",
        "get_escalation": "httpTrigger",
        "claim_escalation": "httpTrigger",
        "release_escalation": "httpTrigger",
        "resolve_escalation": "httpTrigger",
        "post_request": "httpTrigger",
        "openapi": "httpTrigger",
    }


def test_ingest_takes_batches_from_the_hub_named_by_settings(
    bindings: dict[str, list[dict[str, Any]]],
) -> None:
    trigger = _trigger(bindings["ingest"])
    assert trigger["cardinality"].lower() == "many"
    assert trigger["eventHubName"] == "%EVENTHUB_NAME%"
    assert trigger["consumerGroup"] == "%EVENTHUB_CONSUMER_GROUP%"
    assert trigger["connection"] == "EventHubConnection"


def test_batch_ingest_is_an_event_grid_blob_trigger(
    bindings: dict[str, list[dict[str, Any]]],
) -> None:
    trigger = _trigger(bindings["ingest_batch"])
    assert trigger["source"] == "EventGrid"
    assert trigger["path"] == "%BATCH_CONTAINER%/{name}"


def test_each_agent_listens_on_its_own_queue(bindings: dict[str, list[dict[str, Any]]]) -> None:
    queues = {
        name: _trigger(b)["queueName"] for name, b in bindings.items() if name.endswith("_agent")
    }
    assert queues == {
        "intent_agent": "%QUEUE_INTENT%",
        "response_agent": "%QUEUE_RESPONSE%",
        "critic_agent": "%QUEUE_CRITIC%",
        "escalation_agent": "%QUEUE_ESCALATION%",
    }
    assert len(set(queues.values())) == 4


def test_http_routes(bindings: dict[str, list[dict[str, Any]]]) -> None:
    routes = {
        name: _trigger(b)["route"]
        for name, b in bindings.items()
        if _trigger(b)["type"] == "httpTrigger"
    }
    assert routes == {
        "health": "health",
        "ready": "ready",
        "get_conversation": "conversations/{id}",
        "get_batch": "batches/{id}",
        "list_escalations": "escalations",
        "get_escalation": "escalations/{id}",
        "claim_escalation": "escalations/{id}/claim",
        "release_escalation": "escalations/{id}/release",
        "resolve_escalation": "escalations/{id}/resolve",
        "post_request": "requests",
        "openapi": "openapi.json",
    }
    assert _trigger(bindings["health"])["authLevel"] == "ANONYMOUS"
    for name in routes.keys() - {"health", "ready", "openapi"}:
        assert _trigger(bindings[name])["authLevel"] == "FUNCTION", name


def test_every_binding_setting_is_in_the_sample_settings(
    bindings: dict[str, list[dict[str, Any]]],
) -> None:
    used = {
        name
        for function_bindings in bindings.values()
        for binding in function_bindings
        for value in binding.values()
        if isinstance(value, str)
        for name in PLACEHOLDER.findall(value)
    }
    assert used  # the app does use settings in its bindings
    assert used <= set(SAMPLE), sorted(used - set(SAMPLE))


def test_every_connection_is_identity_based_in_the_sample_settings(
    bindings: dict[str, list[dict[str, Any]]],
) -> None:
    connections = {b["connection"] for fb in bindings.values() for b in fb if b.get("connection")}
    assert connections == {"EventHubConnection", "ServiceBusConnection", "BatchStorage"}
    for connection in connections:
        keys = [k for k in SAMPLE if k.startswith(f"{connection}__")]
        assert keys, connection
        # A key named exactly after the connection is a connection string to the extensions
        # (Azure Functions, "Connections" for each binding); the sample leaves it out.
        assert connection not in SAMPLE
