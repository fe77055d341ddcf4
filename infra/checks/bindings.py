"""Bindings: every resource a function binds exists in the Bicep, and resolves the same locally."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    check = _BindingCheck(sample_values, model, deployed, batch_function)
    for binding in bindings:
        kind = binding.type
        if kind in ("serviceBusTrigger", "serviceBus"):
            check.service_bus(binding)
        elif kind in ("eventHubTrigger", "eventHub"):
            check.event_hub(binding)
        elif kind in ("blobTrigger", "blob"):
            check.blob(binding)
        elif kind in ("cosmosDBTrigger", "cosmosDB"):
            check.cosmos(binding)
        elif kind not in _NO_RESOURCES and "connection" in binding.fields:
            check.problems.append(
                f"{binding.function} has a {kind!r} binding that infra/checks/bindings.py does "
                "not know how to check; teach binding_problems about it"
            )
    return check.problems


@dataclass
class _BindingCheck:
    """The checks of one binding at a time, gathering problems."""

    sample_values: Mapping[str, str]
    model: InfraModel
    deployed: Deployed
    batch_function: str | None
    problems: list[str] = field(default_factory=list)

    def resolve(self, binding: Binding, raw: str) -> str | None:
        """``raw`` with its ``%SETTING%`` placeholders replaced, when they resolve to the same
        value locally and in Azure; None (with a problem) otherwise."""
        resolved = raw
        settings = self.model.app_settings
        for placeholder in PLACEHOLDER.findall(raw):
            where = f"{binding.function}: %{placeholder}%"
            local = self.sample_values.get(placeholder, "")
            if not local:
                self.problems.append(f"{where} has no value in local.settings.sample.json")
                return None
            if placeholder not in settings:
                self.problems.append(f"{where} is not set in infra/main.bicep appSettings")
                return None
            known, azure = self.model.setting_value(placeholder)
            if not known:
                self.problems.append(
                    f"{where}: infra/main.bicep sets it to a value it cannot check statically"
                )
                return None
            if azure != local:
                self.problems.append(
                    f"{where} is {local!r} in local.settings.sample.json but {azure!r} in Azure"
                )
                return None
            resolved = resolved.replace(f"%{placeholder}%", local)
        return resolved

    def expect(
        self, binding: Binding, kind: str, name: str | None, available: frozenset[str]
    ) -> None:
        if name is not None and name not in available:
            self.problems.append(
                f"{binding.function} binds {kind} {name!r}, which infra/main.bicep does not create "
                f"(it creates {sorted(available)})"
            )

    def connection_settings(self, binding: Binding, suffixes: Sequence[str]) -> None:
        settings = self.model.app_settings
        connection = str(binding.fields.get("connection") or _CONNECTION_DEFAULTS[binding.type])
        if connection == "AzureWebJobsStorage":
            suffixes = ("__accountName",)
        for suffix in suffixes:
            if f"{connection}{suffix}" not in settings:
                self.problems.append(
                    f"{binding.function} uses connection {connection!r} but infra/main.bicep does "
                    f"not set {connection}{suffix}"
                )
        uses_identity = (
            f"{connection}__credential" in settings or connection == "AzureWebJobsStorage"
        )
        if uses_identity and f"{connection}__clientId" not in settings:
            self.problems.append(
                f"{binding.function}: connection {connection!r} has no __clientId, so the "
                "user-assigned identity would not be used"
            )

    def service_bus(self, binding: Binding) -> None:
        queue = self.resolve(binding, str(binding.fields.get("queueName", "")))
        self.expect(binding, "queue", queue, self.deployed.queues)
        self.connection_settings(binding, ("__fullyQualifiedNamespace",))

    def event_hub(self, binding: Binding) -> None:
        fields = binding.fields
        hub = self.resolve(binding, str(fields.get("eventHubName", "")))
        self.expect(binding, "event hub", hub, self.deployed.hubs)
        if binding.type == "eventHubTrigger":
            group = self.resolve(binding, str(fields.get("consumerGroup") or "$Default"))
            if group != "$Default":
                self.expect(binding, "consumer group", group, self.deployed.consumer_groups)
        self.connection_settings(binding, ("__fullyQualifiedNamespace",))

    def blob(self, binding: Binding) -> None:
        fields = binding.fields
        trigger = binding.type == "blobTrigger"
        path = self.resolve(binding, str(fields.get("path", "")))
        container = path.split("/")[0] if path else None
        self.expect(binding, "blob container", container, self.deployed.containers)
        suffixes = ("__blobServiceUri", "__queueServiceUri") if trigger else ("__blobServiceUri",)
        self.connection_settings(binding, suffixes)
        event_grid = trigger and str(fields.get("source", "")).lower() == "eventgrid"
        batch = self.batch_function
        if event_grid and batch is not None and binding.function != batch:
            self.problems.append(
                f"{binding.function} is the Event Grid blob trigger but infra/names.json "
                f"functions.batchIngest (what the postdeploy hook subscribes) is {batch!r}"
            )

    def cosmos(self, binding: Binding) -> None:
        fields = binding.fields
        database = self.resolve(binding, str(fields.get("databaseName", "")))
        self.expect(binding, "Cosmos DB database", database, self.deployed.cosmos_databases)
        container = self.resolve(binding, str(fields.get("containerName", "")))
        containers = frozenset(self.deployed.cosmos_containers)
        self.expect(binding, "Cosmos DB container", container, containers)
        self.connection_settings(binding, ("__accountEndpoint",))


def _trigger_entities(
    bindings: Sequence[Binding], sample_values: Mapping[str, str], trigger: str, field: str
) -> set[str]:
    """``field`` of every ``trigger`` binding, placeholders resolved through the sample."""
    return {
        PLACEHOLDER.sub(
            lambda m: sample_values.get(m.group(1), m.group(0)), str(b.fields.get(field, ""))
        )
        for b in bindings
        if b.type == trigger
    }


def sb_trigger_queues(bindings: Sequence[Binding], sample_values: Mapping[str, str]) -> set[str]:
    """Queues that have a Service Bus trigger, placeholders resolved through the sample."""
    return _trigger_entities(bindings, sample_values, "serviceBusTrigger", "queueName")


def eh_trigger_hubs(bindings: Sequence[Binding], sample_values: Mapping[str, str]) -> set[str]:
    """Event hubs that have an Event Hubs trigger, placeholders resolved through the sample."""
    return _trigger_entities(bindings, sample_values, "eventHubTrigger", "eventHubName")
