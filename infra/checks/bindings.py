"""Bindings: every resource a function binds exists in the Bicep, and resolves the same locally."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.index import PLACEHOLDER, function_app, indexed_functions
from infra.checks.model import REPO, Deployed, InfraModel

# ----------------------------------------------------------------------------------------------
# Bindings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """One binding of one function, as ``get_dict_repr()`` describes it."""

    function: str
    fields: Mapping[str, Any]

    @property
    def type(self) -> str:
        return str(self.fields.get("type", ""))


def load_function_app(repo: Path = REPO) -> Any:
    """The repository's ``FunctionApp``, as devhost loads it (one import, one index)."""
    return function_app(repo)


def bindings_of(app: Any) -> list[Binding]:
    """The bindings of a ``func.FunctionApp`` (blueprints registered), via its own introspection."""
    found: list[Binding] = []
    for function in indexed_functions(app):
        for binding in function.get_bindings():
            found.append(Binding(function.get_function_name(), dict(binding.get_dict_repr())))
    return found


_CONNECTION_DEFAULTS = {
    "serviceBusTrigger": "AzureWebJobsServiceBus",
    "serviceBus": "AzureWebJobsServiceBus",
    "eventHubTrigger": "AzureWebJobsEventHub",
    "eventHub": "AzureWebJobsEventHub",
    "blobTrigger": "AzureWebJobsStorage",
    "blob": "AzureWebJobsStorage",
    "cosmosDBTrigger": "CosmosDBConnection",
    "cosmosDB": "CosmosDBConnection",
}
_NO_RESOURCES = {"httpTrigger", "http", "timerTrigger"}


def binding_problems(
    bindings: Sequence[Binding],
    sample_values: Mapping[str, str],
    model: InfraModel,
    deployed: Deployed,
    *,
    batch_function: str | None = None,
) -> list[str]:
    """Every queue, hub, consumer group and container a binding names exists in the Bicep,
    ``%SETTING%`` placeholders resolve identically locally and in Azure, every connection has
    its identity-based settings in Azure, and the Event Grid blob trigger is the function the
    postdeploy hook subscribes."""
    problems: list[str] = []
    settings = model.app_settings

    def resolve(binding: Binding, raw: str) -> str | None:
        resolved = raw
        for placeholder in PLACEHOLDER.findall(raw):
            where = f"{binding.function}: %{placeholder}%"
            local = sample_values.get(placeholder, "")
            if not local:
                problems.append(f"{where} has no value in local.settings.sample.json")
                return None
            if placeholder not in settings:
                problems.append(f"{where} is not set in infra/main.bicep appSettings")
                return None
            known, azure = model.setting_value(placeholder)
            if not known:
                problems.append(
                    f"{where}: infra/main.bicep sets it to a value it cannot check statically"
                )
                return None
            if azure != local:
                problems.append(
                    f"{where} is {local!r} in local.settings.sample.json but {azure!r} in Azure"
                )
                return None
            resolved = resolved.replace(f"%{placeholder}%", local)
        return resolved

    def expect(binding: Binding, kind: str, name: str | None, available: frozenset[str]) -> None:
        if name is not None and name not in available:
            problems.append(
                f"{binding.function} binds {kind} {name!r}, which infra/main.bicep does not create "
                f"(it creates {sorted(available)})"
            )

    def connection_settings(binding: Binding, suffixes: Sequence[str]) -> None:
        connection = str(binding.fields.get("connection") or _CONNECTION_DEFAULTS[binding.type])
        if connection == "AzureWebJobsStorage":
            suffixes = ("__accountName",)
        for suffix in suffixes:
            if f"{connection}{suffix}" not in settings:
                problems.append(
                    f"{binding.function} uses connection {connection!r} but infra/main.bicep does "
                    f"not set {connection}{suffix}"
                )
        uses_identity = (
            f"{connection}__credential" in settings or connection == "AzureWebJobsStorage"
        )
        if uses_identity and f"{connection}__clientId" not in settings:
            problems.append(
                f"{binding.function}: connection {connection!r} has no __clientId, so the "
                "user-assigned identity would not be used"
            )

    for binding in bindings:
        fields = binding.fields
        kind = binding.type
        if kind in ("serviceBusTrigger", "serviceBus"):
            queue = resolve(binding, str(fields.get("queueName", "")))
            expect(binding, "queue", queue, deployed.queues)
            connection_settings(binding, ("__fullyQualifiedNamespace",))
        elif kind in ("eventHubTrigger", "eventHub"):
            hub = resolve(binding, str(fields.get("eventHubName", "")))
            expect(binding, "event hub", hub, deployed.hubs)
            if kind == "eventHubTrigger":
                group = resolve(binding, str(fields.get("consumerGroup") or "$Default"))
                if group != "$Default":
                    expect(binding, "consumer group", group, deployed.consumer_groups)
            connection_settings(binding, ("__fullyQualifiedNamespace",))
        elif kind in ("blobTrigger", "blob"):
            path = resolve(binding, str(fields.get("path", "")))
            expect(
                binding, "blob container", path.split("/")[0] if path else None, deployed.containers
            )
            suffixes = (
                ("__blobServiceUri", "__queueServiceUri")
                if kind == "blobTrigger"
                else ("__blobServiceUri",)
            )
            connection_settings(binding, suffixes)
            event_grid = (
                kind == "blobTrigger" and str(fields.get("source", "")).lower() == "eventgrid"
            )
            if event_grid and batch_function is not None and binding.function != batch_function:
                problems.append(
                    f"{binding.function} is the Event Grid blob trigger but infra/names.json "
                    f"functions.batchIngest (what the postdeploy hook subscribes) is "
                    f"{batch_function!r}"
                )
        elif kind in ("cosmosDBTrigger", "cosmosDB"):
            database = resolve(binding, str(fields.get("databaseName", "")))
            expect(binding, "Cosmos DB database", database, deployed.cosmos_databases)
            container = resolve(binding, str(fields.get("containerName", "")))
            expect(binding, "Cosmos DB container", container, frozenset(deployed.cosmos_containers))
            connection_settings(binding, ("__accountEndpoint",))
        elif kind not in _NO_RESOURCES and "connection" in fields:
            problems.append(
                f"{binding.function} has a {kind!r} binding that infra/consistency.py does not "
                "know how to check; teach binding_problems about it"
            )
    return problems


def sb_trigger_queues(bindings: Sequence[Binding], sample_values: Mapping[str, str]) -> set[str]:
    """Queues that have a Service Bus trigger, placeholders resolved through the sample."""
    return {
        PLACEHOLDER.sub(
            lambda m: sample_values.get(m.group(1), m.group(0)), str(b.fields.get("queueName", ""))
        )
        for b in bindings
        if b.type == "serviceBusTrigger"
    }
