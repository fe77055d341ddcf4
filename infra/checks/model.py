"""What the Bicep deploys, and loading the repository's artefacts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from infra.bicep_scan import (
    BicepFile,
    ModuleCall,
    ScanError,
    known_array_items,
    try_evaluate,
)

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

# ----------------------------------------------------------------------------------------------
# What the Bicep deploys
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """Names of the resources the Bicep creates, as far as they are statically known."""

    queues: frozenset[str]
    hubs: frozenset[str]
    consumer_groups: frozenset[str]
    containers: frozenset[str]
    cosmos_databases: frozenset[str]
    cosmos_containers: Mapping[str, str]
    """Cosmos container name -> partition key path."""


@dataclass(frozen=True)
class InfraModel:
    """``infra/main.bicep`` with its modules and the app settings it composes."""

    main: BicepFile
    modules: Mapping[str, BicepFile]

    @classmethod
    def load(cls, infra: Path = INFRA) -> InfraModel:
        main = BicepFile.load(infra / "main.bicep")
        modules = {call.path: BicepFile.load(infra / call.path) for call in main.modules.values()}
        return cls(main, modules)

    @cached_property
    def app_settings(self) -> dict[str, str]:
        """App setting name -> Bicep expression, from ``var appSettings`` in main.bicep."""
        return self.main.object_var("appSettings")

    def setting_value(self, name: str) -> tuple[bool, Any]:
        if name not in self.app_settings:
            return False, None
        return try_evaluate(self.main, self.app_settings[name])

    def calls(self, module: str) -> list[ModuleCall]:
        return self.main.module_calls_to(module)

    def param_problems(self, module: str, param: str, want: Any, source: str) -> list[str]:
        """Every call of ``module`` passes ``param`` as an expression main.bicep evaluates
        statically to ``want`` (named ``source`` in the message); no call at all is a problem."""
        problems: list[str] = []
        for call in self.calls(module) or [ModuleCall("?", module, {}, False)]:
            expression = call.params.get(param)
            if expression is None:
                problems.append(
                    f"infra/main.bicep module {call.symbol} passes no {param} to {module}"
                )
                continue
            known, value = try_evaluate(self.main, expression)
            if not known or value != want:
                problems.append(
                    f"infra/main.bicep module {call.symbol}: {param} = {expression} "
                    f"({value if known else 'not static'}) is not {source} {want!r}"
                )
        return problems


_WIRING: tuple[tuple[str, str, str], ...] = (
    ("modules/servicebus.bicep", "queues", "Microsoft.ServiceBus/namespaces/queues"),
    ("modules/eventhubs.bicep", "hubName", "Microsoft.EventHub/namespaces/eventhubs"),
    (
        "modules/eventhubs.bicep",
        "consumerGroupName",
        "Microsoft.EventHub/namespaces/eventhubs/consumergroups",
    ),
    (
        "modules/storage.bicep",
        "containers",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
    ),
    ("modules/cosmos.bicep", "databaseName", "Microsoft.DocumentDB/databaseAccounts/sqlDatabases"),
    (
        "modules/cosmos.bicep",
        "containers",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers",
    ),
)


def deployed_names(model: InfraModel) -> tuple[Deployed, list[str]]:
    """The names main.bicep hands to the modules that create queues, hubs, consumer groups,
    blob containers and Cosmos containers, and problems with that wiring."""
    problems: list[str] = []
    values: dict[tuple[str, str], list[Any]] = {}
    for module, param, resource_type in _WIRING:
        calls = model.calls(module)
        if not calls:
            problems.append(f"infra/main.bicep never calls {module}")
            continue
        if resource_type not in model.modules[module].resource_types:
            problems.append(f"infra/{module} declares no {resource_type}")
        for call in calls:
            if param not in call.params:
                problems.append(
                    f"infra/main.bicep module {call.symbol} passes no {param} to {module}"
                )
                continue
            known, value = try_evaluate(model.main, call.params[param])
            if known:
                values.setdefault((module, param), []).append(value)
            elif module != "modules/storage.bicep":
                problems.append(
                    f"infra/main.bicep module {call.symbol}: {param} = {call.params[param]!r} is "
                    "not statically known; take it from infra/names.json"
                )
            else:
                # A container list may mix names.json names with computed ones (the deployment
                # package container); the computed ones are checked item by item below.
                values.setdefault((module, param), []).append(
                    known_array_items(model.main, call.params[param])
                )

    def flat(module: str, param: str) -> frozenset[str]:
        out: set[str] = set()
        for value in values.get((module, param), []):
            if isinstance(value, dict):
                out.update(str(v) for v in value.values())
            elif isinstance(value, list):
                out.update(str(v) for v in value)
            elif value is not None:
                out.add(str(value))
        return frozenset(out)

    cosmos: dict[str, str] = {}
    for value in values.get(("modules/cosmos.bicep", "containers"), []):
        if isinstance(value, dict):
            for container in value.values():
                cosmos[str(container["name"])] = str(container["partitionKey"])
    deployed = Deployed(
        queues=flat("modules/servicebus.bicep", "queues"),
        hubs=flat("modules/eventhubs.bicep", "hubName"),
        consumer_groups=flat("modules/eventhubs.bicep", "consumerGroupName"),
        containers=flat("modules/storage.bicep", "containers"),
        cosmos_databases=flat("modules/cosmos.bicep", "databaseName"),
        cosmos_containers=cosmos,
    )
    return deployed, problems


# ----------------------------------------------------------------------------------------------
# Loading the repository's artefacts
# ----------------------------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_keda(directory: Path = INFRA / "keda") -> list[dict[str, Any]]:
    import yaml

    documents: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return documents


def role_ids(infra: Path = INFRA) -> dict[str, str]:
    """Role name -> definition id, Azure RBAC and Cosmos DB data-plane, from infra/roles.json."""
    roles = load_json(infra / "roles.json")
    return {**roles["azureRoles"], **roles["cosmosSqlRoles"]}


def project_python_version(repo: Path = REPO) -> str:
    """``3.11`` from pyproject's ``requires-python = ">=3.11,<3.12"``."""
    import tomllib

    spec = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "requires-python"
    ]
    match = re.search(r">=\s*(\d+\.\d+)", spec)
    if match is None:
        raise ScanError(f"pyproject.toml requires-python {spec!r} has no lower bound")
    return match.group(1)
