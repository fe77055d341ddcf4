"""Consistency checks between the code, its bindings, the Bicep, the KEDA manifests and the
local settings sample.

Switchboard keeps each name and number in one place (``infra/names.json``, ``scale.json``,
``host.json``, ``shared/config.py``) and several artefacts restate them: the Bicep app settings and
resources, the KEDA ScaledObjects, ``local.settings.sample.json``. Every check here returns a list
of problems, each a sentence naming the artefact to fix; an empty list means consistent.
``tests/unit/test_infra_consistency.py`` runs them; ``python -m infra.consistency`` prints them.

The Bicep is read by ``infra/bicep_scan.py``, without a Bicep compiler; a value known only at
deployment time (a module output) is reported as unresolvable where a check needs it.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from functions.index import PLACEHOLDER, function_app, indexed_functions
from infra.bicep_scan import (
    BicepFile,
    ModuleCall,
    ScanError,
    array_items,
    closing_bracket,
    known_array_items,
    mask,
    try_evaluate,
)
from infra.topics import topic_problems

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"

LOCAL_ONLY: dict[str, str] = {
    "AZURE_OPENAI_API_KEY": (
        "Azure calls Azure OpenAI with the managed identity; a key is only for the simulator or "
        "another OpenAI-compatible endpoint, and keys stay out of Azure app settings."
    ),
    "OPENAI_BASE_URL": (
        "Selects a non-Azure OpenAI-compatible endpoint (the devhost simulator, Ollama, vLLM); "
        "Azure uses AZURE_OPENAI_ENDPOINT."
    ),
    "SQLITE_PATH": "The SQLite store backs devhost; Azure runs STORE_BACKEND=cosmos.",
    "ServiceBusConnection": (
        "A connection string instead of the identity settings, for devhost's AMQP endpoint or an "
        "emulator; Azure connects with the managed identity, and keys stay out of app settings."
    ),
    "EventHubConnection": (
        "A connection string instead of the identity settings, for devhost's AMQP endpoint or an "
        "emulator; Azure connects with the managed identity, and keys stay out of app settings."
    ),
    "LLM_QUOTA_SQLITE_PATH": (
        "The SQLite quota ledger is devhost's; Azure runs LLM_QUOTA_BACKEND=store (Cosmos DB)."
    ),
    "OTEL_EXPORTER_OTLP_ENDPOINT": (
        "A local OpenTelemetry collector; Azure exports to Application Insights "
        "(TELEMETRY_EXPORTER=azuremonitor)."
    ),
}
"""Settings the code reads that Azure deliberately leaves unset, each with its reason."""

OPTIONAL_UNSET: dict[str, str] = {
    "TIKTOKEN_CACHE_DIR": (
        "tiktoken's own cache location; unset means tiktoken's default, and without a cached "
        "encoding the estimator counts characters instead (shared/llm/tokens.py)."
    ),
    "DATA_GYM_CACHE_DIR": "tiktoken's older name for TIKTOKEN_CACHE_DIR; same reason.",
}
"""Optional settings of libraries the code honours but neither Azure nor the sample sets."""

PLATFORM_PROVIDED: dict[str, str] = {
    "WEBSITE_SITE_NAME": "Set by App Service on every instance; tells the code it runs in Azure.",
    "WEBSITE_INSTANCE_ID": "Set by App Service on every instance; tells the code it runs in Azure.",
}
"""Settings the platform sets itself: neither the Bicep nor the sample lists them."""

DEVHOST_PREFIX = "DEVHOST_"
CODE_DIRS = ("shared", "functions")
CODE_FILES = ("function_app.py",)


# ----------------------------------------------------------------------------------------------
# Settings the code reads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeSetting:
    """One environment setting the code reads, where, and its literal default if any."""

    name: str
    where: str
    default: object = None


def settings_read_by_code(repo: Path = REPO) -> dict[str, CodeSetting]:
    """Every setting ``shared/config.py`` reads through its ``_Reader``, plus every literal
    ``os.environ`` / ``os.getenv`` read in the app's code (devhost-only ``DEVHOST_*`` aside)."""
    from shared.domain.messages import Stage

    found: dict[str, CodeSetting] = {}
    config = repo / "shared" / "config.py"
    for setting in reader_calls(config.read_text(encoding="utf-8"), [s.name for s in Stage]):
        found.setdefault(setting.name, _relocate(setting, config, repo))
    for path in _code_files(repo):
        for setting in environ_reads(path.read_text(encoding="utf-8")):
            if not setting.name.startswith(DEVHOST_PREFIX):
                found.setdefault(setting.name, _relocate(setting, path, repo))
    return found


def _relocate(setting: CodeSetting, path: Path, repo: Path) -> CodeSetting:
    where = f"{path.relative_to(repo).as_posix()}:{setting.where}"
    return CodeSetting(setting.name, where, setting.default)


def _code_files(repo: Path) -> Iterator[Path]:
    for directory in CODE_DIRS:
        yield from sorted((repo / directory).rglob("*.py"))
    for name in CODE_FILES:
        if (repo / name).is_file():
            yield repo / name


def reader_calls(source: str, stage_names: Sequence[str]) -> list[CodeSetting]:
    """Settings read in ``source`` (``shared/config.py``): string literals passed first to a
    method of the ``_Reader`` class, with f-strings over a stage expanded for every stage."""
    tree = ast.parse(source)
    methods = _reader_methods(tree)
    found: list[CodeSetting] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in methods
            and node.args
        ):
            default = _literal(node.args[1]) if len(node.args) > 1 else None
            for name in _setting_names(node.args[0], stage_names):
                found.append(CodeSetting(name, str(node.lineno), default))
    return found


def _reader_methods(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "_Reader":
            return {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")
            }
    raise ScanError("shared/config.py: no class _Reader; teach infra/consistency.py the new reader")


def _names_env(node: ast.expr) -> bool:
    """Whether ``node`` is the process environment or a mapping standing for it."""
    last = ast.unparse(node).split(".")[-1].lstrip("_")
    return last in ("env", "environ")


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _setting_names(node: ast.expr, stage_names: Sequence[str]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return _expand_fstring(node, stage_names)
    return []


def _expand_fstring(node: ast.JoinedStr, stage_names: Sequence[str]) -> list[str]:
    """``f"LLM_DEPLOYMENT_{stage.name}"`` becomes one name per stage."""
    parts: list[list[str]] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append([str(value.value)])
        elif (
            isinstance(value, ast.FormattedValue)
            and isinstance(value.value, ast.Attribute)
            and value.value.attr == "name"
        ):
            parts.append(list(stage_names))
        else:
            raise ScanError(
                f"shared/config.py:{node.lineno}: cannot expand the setting name "
                f"{ast.unparse(node)}; only f-strings over a stage's .name are understood"
            )
    names = [""]
    for options in parts:
        names = [prefix + option for prefix in names for option in options]
    return names


def environ_reads(source: str) -> list[CodeSetting]:
    """Literal keys read from the environment: ``os.environ[...]``, ``os.environ.get(...)``,
    ``os.getenv(...)``, and the same on an ``env`` mapping (``env``, ``self._env``) that stands
    for it, including ``"KEY" in env``."""
    found: list[CodeSetting] = []
    for node in ast.walk(ast.parse(source)):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and _names_env(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            reads_env = isinstance(function, ast.Attribute) and (
                function.attr == "get" and _names_env(function.value)
            )
            if reads_env or ast.unparse(function) in ("os.getenv", "getenv"):
                key = node.args[0]
        elif (
            isinstance(node, ast.Compare)
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In)
            and _names_env(node.comparators[0])
        ):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append(CodeSetting(key.value, str(getattr(node, "lineno", 0))))
    return found


def setting_problems(
    read: Mapping[str, CodeSetting],
    bicep_settings: Iterable[str],
    sample_settings: Iterable[str],
) -> list[str]:
    """Every setting the code reads is set in Azure (or documented local-only) and listed in the
    local settings sample; local-only settings stay out of Azure; no allowlist entry is stale."""
    bicep = set(bicep_settings)
    sample = set(sample_settings)
    problems: list[str] = []
    for name, setting in sorted(read.items()):
        if name in PLATFORM_PROVIDED or name in OPTIONAL_UNSET:
            continue
        if name in LOCAL_ONLY:
            if name in bicep:
                problems.append(
                    f"{name} ({setting.where}) is local-only ({LOCAL_ONLY[name]}) but "
                    "infra/main.bicep sets it"
                )
        elif name not in bicep:
            problems.append(
                f"{name} ({setting.where}) is read by the code but not set in "
                "infra/main.bicep appSettings"
            )
        if name not in sample:
            problems.append(
                f"{name} ({setting.where}) is read by the code but missing from "
                "local.settings.sample.json"
            )
    for name in sorted(
        (set(LOCAL_ONLY) | set(PLATFORM_PROVIDED) | set(OPTIONAL_UNSET)) - set(read)
    ):
        problems.append(
            f"{name} is allowlisted in infra/consistency.py but the code no longer reads it"
        )
    return problems


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
                problems.append(f"infra/main.bicep module {call.symbol} passes no {param}")
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


# ----------------------------------------------------------------------------------------------
# Durations, locks and scale
# ----------------------------------------------------------------------------------------------


def iso_duration_seconds(text: str) -> float:
    """Seconds in an ISO 8601 duration such as ``PT1M`` or ``P1DT2H``."""
    match = re.fullmatch(
        r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text.strip()
    )
    if not match or text.strip() in ("P", "PT"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    days, hours, minutes, seconds = (float(group or 0) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def timespan_seconds(text: str) -> float:
    """Seconds in a .NET timespan such as ``00:05:00`` or ``1.02:00:00``."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a timespan (hh:mm:ss)")
    days, hours, minutes, seconds = (float(group or 0) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def lock_problems(
    lock_durations: Sequence[str],
    host: Mapping[str, Any],
    llm_seconds: Mapping[str, float],
) -> list[str]:
    """The Service Bus lock outlives every LLM time limit (``llm_seconds``: label -> seconds),
    and the host renews it at least as long as a function may run."""
    problems: list[str] = []
    if not lock_durations:
        return ["infra/modules/servicebus.bicep sets no lockDuration"]
    service_bus = host.get("extensions", {}).get("serviceBus", {})
    renewal_text = service_bus.get("maxAutoLockRenewalDuration")
    renewal = timespan_seconds(renewal_text) if renewal_text else 300.0
    timeout_text = host.get("functionTimeout")
    function_timeout = timespan_seconds(timeout_text) if timeout_text else None
    for text in lock_durations:
        lock = iso_duration_seconds(text)
        for label, seconds in sorted(llm_seconds.items()):
            if not lock > seconds:
                problems.append(
                    f"Service Bus lockDuration {text} ({lock:g}s) must exceed {label} "
                    f"({seconds:g}s)"
                )
        if renewal < lock:
            problems.append(
                f"host.json maxAutoLockRenewalDuration ({renewal:g}s) is shorter than the lock "
                f"({lock:g}s)"
            )
    if function_timeout is not None and renewal < function_timeout:
        problems.append(
            f"host.json maxAutoLockRenewalDuration ({renewal:g}s) is shorter than functionTimeout "
            f"({function_timeout:g}s): a long invocation would lose its lock"
        )
    return problems


def scale_problems(model: InfraModel, scale: Mapping[str, Any], python_version: str) -> list[str]:
    """The Flex Consumption limits and the hub's partitions are scale.json's, and the worker's
    Python is the project's."""
    problems: list[str] = []
    expected = {
        ("modules/functionapp.bicep", "maximumInstanceCount"): scale["maximumInstanceCount"],
        ("modules/functionapp.bicep", "instanceMemoryMB"): scale["instanceMemoryMB"],
        ("modules/functionapp.bicep", "pythonVersion"): python_version,
        ("modules/functionapp.bicep", "alwaysReady"): scale.get("alwaysReady", []),
        ("modules/eventhubs.bicep", "partitionCount"): scale["eventHubPartitions"],
    }
    for (module, param), want in expected.items():
        for call in model.calls(module) or [ModuleCall("?", module, {}, False)]:
            expression = call.params.get(param)
            if expression is None:
                problems.append(f"infra/main.bicep passes no {param} to {module}")
                continue
            known, value = try_evaluate(model.main, expression)
            if not known or value != want:
                problems.append(
                    f"infra/main.bicep {module} {param} = {expression} "
                    f"({value if known else 'not static'}); expected {want!r}"
                )
    if scale["instanceMemoryMB"] not in (512, 2048, 4096):
        problems.append(
            f"scale.json instanceMemoryMB {scale['instanceMemoryMB']} is not 512, 2048 or 4096"
        )
    if not 1 <= scale["maximumInstanceCount"] <= 1000:
        problems.append(
            f"scale.json maximumInstanceCount {scale['maximumInstanceCount']} is outside 1..1000"
        )
    return problems


ALWAYS_READY_GROUPS: Mapping[str, frozenset[str]] = {
    "http": frozenset({"httpTrigger"}),
    "blob": frozenset({"blobTrigger"}),
    "durable": frozenset({"orchestrationTrigger", "activityTrigger", "entityTrigger"}),
}
"""Flex Consumption's per-function scaling: the functions of these triggers scale together as
one group (always-ready name ``http``, ``blob``, ``durable``); every other function scales on
its own, named ``function:<name>``
(https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#per-function-scaling)."""
ALWAYS_READY_FUNCTION = "function:"


def always_ready_problems(scale: Mapping[str, Any], bindings: Sequence[Binding]) -> list[str]:
    """scale.json ``alwaysReady`` has Flex Consumption's shape and names what the app has: a
    group with a function in it, or ``function:<name>`` of a function that scales on its own;
    devhost can run every count (within ``maxInstancesPerFunction``, and the hub's partitions
    for a hub function), and together they fit ``maximumInstanceCount``."""
    entries = scale.get("alwaysReady", [])
    if not isinstance(entries, list):
        return ["scale.json alwaysReady is not a list of {name, instanceCount}"]
    triggers = {b.function: b.type for b in bindings if b.type.endswith("Trigger")}
    grouped = {t for group in ALWAYS_READY_GROUPS.values() for t in group}
    devhost_max = int(scale.get("devhost", {}).get("maxInstancesPerFunction", 4))
    partitions = int(scale.get("eventHubPartitions", 4))
    problems: list[str] = []
    seen: set[str] = set()
    total = 0
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        count = entry.get("instanceCount") if isinstance(entry, dict) else None
        if not isinstance(name, str) or isinstance(count, bool) or not isinstance(count, int):
            problems.append(
                f"scale.json alwaysReady entry {entry!r} is not {{name, instanceCount}}"
            )
            continue
        if count < 0:
            problems.append(f"scale.json alwaysReady {name}: instanceCount {count} is negative")
        if name in seen:
            problems.append(f"scale.json alwaysReady lists {name} twice")
        seen.add(name)
        total += max(0, count)
        if name in ALWAYS_READY_GROUPS:
            if not any(t in ALWAYS_READY_GROUPS[name] for t in triggers.values()):
                problems.append(f"scale.json alwaysReady group {name!r} has no function in it")
            continue
        if not name.startswith(ALWAYS_READY_FUNCTION):
            problems.append(
                f"scale.json alwaysReady name {name!r} is neither a group "
                f"({', '.join(ALWAYS_READY_GROUPS)}) nor function:<name>"
            )
            continue
        function = name[len(ALWAYS_READY_FUNCTION) :]
        trigger = triggers.get(function)
        if trigger is None:
            problems.append(f"scale.json alwaysReady {name}: the app has no function {function!r}")
        elif trigger in grouped:
            group = next(g for g, ts in ALWAYS_READY_GROUPS.items() if trigger in ts)
            problems.append(
                f"scale.json alwaysReady {name}: a {trigger} function scales with its group; "
                f"name the group {group!r}"
            )
        else:
            limit = min(devhost_max, partitions) if trigger == "eventHubTrigger" else devhost_max
            if count > limit:
                problems.append(
                    f"scale.json alwaysReady {name}: {count} instances, more than devhost can "
                    f"run for it ({limit})"
                )
    maximum = int(scale.get("maximumInstanceCount", 0))
    if total > maximum:
        problems.append(
            f"scale.json alwaysReady keeps {total} instances, more than maximumInstanceCount "
            f"{maximum}"
        )
    return problems


# ----------------------------------------------------------------------------------------------
# KEDA
# ----------------------------------------------------------------------------------------------


_ENV_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def keda_problems(
    documents: Sequence[Mapping[str, Any]],
    host: Mapping[str, Any],
    scale: Mapping[str, Any],
    model: InfraModel,
    deployed: Deployed,
    triggered_queues: set[str],
    triggered_hubs: set[str],
) -> list[str]:
    """ScaledObjects use the Functions targets (host.json) and limits (scale.json), point at
    resources the Bicep creates, authenticate with workload identity, and cover every queue and
    hub a trigger reads."""
    problems: list[str] = []
    extensions = host.get("extensions", {})
    max_calls = str(extensions.get("serviceBus", {}).get("maxConcurrentCalls"))
    batch_size = str(extensions.get("eventHubs", {}).get("maxEventBatchSize"))
    max_instances = int(scale["maximumInstanceCount"])
    partitions = int(scale["eventHubPartitions"])
    step_up = scale.get("devhost", {}).get("maxStepUp")
    outputs = model.main.outputs
    auths = {
        doc["metadata"]["name"]: doc
        for doc in documents
        if doc.get("kind") == "TriggerAuthentication"
    }
    for name, doc in auths.items():
        provider = doc.get("spec", {}).get("podIdentity", {}).get("provider")
        if provider != "azure-workload":
            problems.append(f"TriggerAuthentication {name} uses {provider!r}, not azure-workload")

    def value_of(raw: Any) -> str | None:
        """A metadata value, a ${OUTPUT} placeholder resolved through main.bicep when static."""
        text = str(raw)
        match = _ENV_PLACEHOLDER.fullmatch(text)
        if match is None:
            return text
        if match.group(1) not in outputs:
            return None
        known, value = try_evaluate(model.main, outputs[match.group(1)])
        return str(value) if known else None

    covered_queues: set[str] = set()
    covered_hubs: set[str] = set()
    for doc in documents:
        if doc.get("kind") != "ScaledObject":
            continue
        name = doc["metadata"]["name"]
        spec = doc.get("spec", {})
        if spec.get("minReplicaCount") != 0:
            problems.append(f"ScaledObject {name}: minReplicaCount should be 0 (scale to zero)")
        policies = (
            spec.get("advanced", {})
            .get("horizontalPodAutoscalerConfig", {})
            .get("behavior", {})
            .get("scaleUp", {})
            .get("policies", [])
        )
        for policy in policies:
            if (
                step_up is not None
                and policy.get("type") == "Pods"
                and policy.get("value") != step_up
            ):
                problems.append(
                    f"ScaledObject {name}: scale-up step {policy.get('value')} differs from "
                    f"scale.json devhost.maxStepUp {step_up}"
                )
        for trigger in spec.get("triggers", []):
            where = f"ScaledObject {name}"
            metadata = trigger.get("metadata", {})
            for raw in metadata.values():
                for placeholder in _ENV_PLACEHOLDER.findall(str(raw)):
                    if placeholder not in outputs:
                        problems.append(
                            f"{where}: ${{{placeholder}}} is not an output of infra/main.bicep"
                        )
            reference = trigger.get("authenticationRef", {}).get("name")
            if reference not in auths:
                problems.append(
                    f"{where}: authenticationRef {reference!r} is not a TriggerAuthentication here"
                )
            kind = trigger.get("type")
            if kind == "azure-servicebus":
                queue = value_of(metadata.get("queueName"))
                if queue is not None:
                    covered_queues.add(queue)
                    if queue not in deployed.queues:
                        problems.append(
                            f"{where}: queue {queue!r} is not created by infra/main.bicep"
                        )
                if str(metadata.get("messageCount")) != max_calls:
                    problems.append(
                        f"{where}: messageCount {metadata.get('messageCount')!r} differs from "
                        f"host.json serviceBus.maxConcurrentCalls {max_calls}"
                    )
                if spec.get("maxReplicaCount") != max_instances:
                    problems.append(
                        f"{where}: maxReplicaCount {spec.get('maxReplicaCount')} differs from "
                        f"scale.json maximumInstanceCount {max_instances}"
                    )
            elif kind == "azure-eventhub":
                hub = value_of(metadata.get("eventHubName"))
                group = value_of(metadata.get("consumerGroup"))
                if hub is not None:
                    covered_hubs.add(hub)
                    if hub not in deployed.hubs:
                        problems.append(
                            f"{where}: event hub {hub!r} is not created by infra/main.bicep"
                        )
                if group is not None and group not in deployed.consumer_groups:
                    problems.append(
                        f"{where}: consumer group {group!r} is not created by infra/main.bicep"
                    )
                if str(metadata.get("unprocessedEventThreshold")) != batch_size:
                    problems.append(
                        f"{where}: unprocessedEventThreshold "
                        f"{metadata.get('unprocessedEventThreshold')!r} differs from host.json "
                        f"eventHubs.maxEventBatchSize {batch_size}"
                    )
                ceiling = min(max_instances, partitions)
                if spec.get("maxReplicaCount") != ceiling:
                    problems.append(
                        f"{where}: maxReplicaCount {spec.get('maxReplicaCount')} should be "
                        f"{ceiling} (scale.json maximumInstanceCount capped by eventHubPartitions)"
                    )
                if metadata.get("checkpointStrategy") != "azureFunction":
                    problems.append(f"{where}: checkpointStrategy should be azureFunction")
            else:
                problems.append(
                    f"{where}: trigger type {kind!r} is not checked by infra/consistency.py"
                )
    for queue in sorted(triggered_queues - covered_queues):
        problems.append(f"queue {queue!r} has a Service Bus trigger but no KEDA ScaledObject")
    for queue in sorted(covered_queues - triggered_queues):
        problems.append(
            f"a KEDA ScaledObject scales on queue {queue!r}, which no function is triggered by"
        )
    for hub in sorted(triggered_hubs - covered_hubs):
        problems.append(f"event hub {hub!r} has a trigger but no KEDA ScaledObject")
    return problems


# ----------------------------------------------------------------------------------------------
# Roles: what the Bicep grants, against what the documentation asks for
# ----------------------------------------------------------------------------------------------

FUNCTIONS_ROLES_DOC = (
    "https://learn.microsoft.com/azure/azure-functions/functions-reference"
    "#grant-permission-to-the-identity"
)
HOST_STORAGE_DOC = (
    "https://learn.microsoft.com/azure/azure-functions/functions-reference"
    "#connecting-to-host-storage-with-an-identity"
)
SCALING_DOC = "https://learn.microsoft.com/azure/azure-functions/event-driven-scaling"


@dataclass(frozen=True)
class Grant:
    """One role given to one principal at one scope, as the Bicep states it.

    ``principal`` is ``app`` (the function app's identity), ``developer`` (``principalId``),
    ``keda`` (``kedaPrincipalId``) or ``eventgrid`` (the system topic's identity); ``scope`` is
    ``<main.bicep module symbol> <what in it>``; ``condition`` is the switch the grant depends on.
    """

    principal: str
    role: str
    scope: str
    condition: str | None = None


@dataclass(frozen=True)
class DocumentedRole:
    """A grant the documentation asks for, with the built-in role's id, the reason and the doc."""

    grant: Grant
    role_id: str
    why: str
    doc: str


def _documented(
    principal: str,
    role: str,
    role_id: str,
    scope: str,
    why: str,
    doc: str,
    condition: str | None = None,
) -> DocumentedRole:
    return DocumentedRole(Grant(principal, role, scope, condition), role_id, why, doc)


DOCUMENTED_ROLES: tuple[DocumentedRole, ...] = (
    # AzureWebJobsStorage ("Connecting to host storage with an identity").
    _documented(
        "app",
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "hostStorage account",
        "host coordination and key store; Event Hubs checkpoints; the Flex deployment package",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "hostStorage account",
        "Azure Blobs (trigger only): the trigger's internal queues live in host storage",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Account Contributor",
        "17d1049b-9a84-46fb-8f53-869881c3d3ab",
        "hostStorage account",
        "Azure Blobs (trigger only): 'All of' this, Blob Data Owner and Queue Data Contributor",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Table Data Contributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "hostStorage account",
        "host diagnostic events, persisted in table storage",
        HOST_STORAGE_DOC,
    ),
    # The blob trigger's own connection (BatchStorage), Azure Blobs extension table.
    _documented(
        "app",
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "batchStorage container 'batches'",
        "blob trigger (Event Grid source) on the batches container",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "batchStorage account",
        "blob trigger: poison blobs go to a queue on the connection's account",
        FUNCTIONS_ROLES_DOC,
    ),
    # Service Bus extension table: trigger Receiver (Owner), output binding Sender.
    _documented(
        "app",
        "Azure Service Bus Data Sender",
        "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
        "serviceBus namespace",
        "output: every stage sends to the next queue, a rescheduled copy or deadletter",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Azure Service Bus Data Receiver",
        "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
        "serviceBus triggered queues",
        "trigger, on the queues a trigger reads only",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Azure Service Bus Data Owner",
        "090c5cfd-751d-490a-894a-3ce6f1109419",
        "serviceBus triggered queues",
        "trigger (documented alongside Receiver): queue length for scaling needs manage rights",
        SCALING_DOC,
        condition="serviceBusScaleOnQueueLength",
    ),
    # Event Hubs extension table: trigger Receiver (or Owner); checkpoints are host storage blobs.
    _documented(
        "app",
        "Azure Event Hubs Data Receiver",
        "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
        "eventHubs hub",
        "ingest trigger",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Cosmos DB Built-in Data Contributor",
        "00000000-0000-0000-0000-000000000002",
        "cosmos database",
        "state, quota and batches: reads and conditional writes (data-plane role)",
        "https://learn.microsoft.com/azure/cosmos-db/nosql/security/how-to-grant-data-plane-role-based-access",
    ),
    _documented(
        "app",
        "Key Vault Secrets User",
        "4633458b-17de-408a-b874-0445c86b69e6",
        "keyVault vault",
        "Key Vault references in app settings",
        "https://learn.microsoft.com/azure/app-service/app-service-key-vault-references",
    ),
    _documented(
        "app",
        "Cognitive Services OpenAI User",
        "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
        "openAi account",
        "chat completions with Entra ID",
        "https://learn.microsoft.com/azure/ai-services/openai/how-to/role-based-access-control",
    ),
    _documented(
        "app",
        "Monitoring Metrics Publisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
        "monitoring Application Insights",
        "telemetry with local authentication off",
        "https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication",
    ),
    # The Event Grid system topic: dead letters into the batch account.
    _documented(
        "eventgrid",
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "eventGrid container 'eventgrid-deadletter'",
        "dead-lettering with the topic's managed identity",
        "https://learn.microsoft.com/azure/event-grid/manage-event-delivery",
    ),
    # The person or pipeline running azd, to exercise the deployment.
    _documented(
        "developer",
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "batchStorage account",
        "uploading batches",
        FUNCTIONS_ROLES_DOC,
        condition="hasDeveloper",
    ),
    _documented(
        "developer",
        "Azure Event Hubs Data Sender",
        "2b629674-e913-4c01-ae53-ef4638d8f975",
        "eventHubs hub",
        "sending requests",
        FUNCTIONS_ROLES_DOC,
        condition="hasDeveloper",
    ),
    # The KEDA operator (infra/keda), reading the same backlogs the scale controller reads.
    _documented(
        "keda",
        "Azure Service Bus Data Owner",
        "090c5cfd-751d-490a-894a-3ce6f1109419",
        "serviceBus triggered queues",
        "queue lengths for the azure-servicebus scaler",
        "https://keda.sh/docs/latest/scalers/azure-service-bus/",
        condition="hasKeda",
    ),
    _documented(
        "keda",
        "Azure Event Hubs Data Receiver",
        "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
        "eventHubs hub",
        "partition information for the azure-eventhub scaler",
        "https://keda.sh/docs/latest/scalers/azure-event-hub/",
        condition="hasKeda",
    ),
    _documented(
        "keda",
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "hostStorage account",
        "the Functions checkpoints the azure-eventhub scaler compares with the hub",
        "https://keda.sh/docs/latest/scalers/azure-event-hub/",
        condition="hasKeda",
    ),
)
"""Every role the Bicep grants, per principal and scope, with the documentation asking for it.
The Service Bus Data Owner on the triggered queues stays because scaling on queue length needs
manage rights (``SCALING_DOC``); without ``serviceBusScaleOnQueueLength`` the app keeps Receiver and
Sender only."""

# Where each module makes the assignments of each role parameter, and the label of that scope.
# The label is checked against the ``scope:`` the module's role assignment resource declares.
_ROLE_PARAMS: dict[tuple[str, str], tuple[str, str]] = {
    ("modules/storage.bicep", "roleAssignments"): ("account", "scope: account"),
    ("modules/servicebus.bicep", "roleAssignments"): ("namespace", "scope: namespace"),
    ("modules/servicebus.bicep", "queueRoleAssignments"): (
        "triggered queues",
        "scope: queue[triggeredIndexes[i / roleCount]]",
    ),
    ("modules/eventhubs.bicep", "roleAssignments"): ("hub", "scope: hub"),
    ("modules/keyvault.bicep", "roleAssignments"): ("vault", "scope: vault"),
    ("modules/openai.bicep", "roleAssignments"): ("account", "scope: account"),
    ("modules/monitoring.bicep", "roleAssignments"): ("Application Insights", "scope: appInsights"),
}
_CONTAINER_SCOPE = "scope: roleContainers[index]"
_PRINCIPALS = {
    "app": "app",
    "identity.outputs.principalId": "app",
    "principalId": "developer",
    "kedaPrincipalId": "keda",
}
_ROLE_REFERENCE = re.compile(r"roles\['([^']+)'\]")
_BRACKETS = {"{": "}", "[": "]", "(": ")"}


def _enclosing(masked: str, index: int, opening: str) -> int | None:
    """Index of the innermost unclosed ``opening`` bracket before ``index``."""
    closing = _BRACKETS[opening]
    depth = 0
    for position in range(index - 1, -1, -1):
        char = masked[position]
        if char == closing:
            depth += 1
        elif char == opening:
            if depth == 0:
                return position
            depth -= 1
    return None


def _grants_in(
    model: InfraModel, call: ModuleCall, param: str, label: str
) -> tuple[list[Grant], list[str]]:
    """The grants of one role-assignment array passed to a module: each ``roles['...']`` sits in
    an object that is ``union(app, {...})`` or carries ``principalId:``, maybe ``container:``, in
    an array that may be one branch of ``switch ? [...] : []``."""
    expression = call.params[param]
    masked = mask(expression)
    grants: list[Grant] = []
    problems: list[str] = []
    for match in _ROLE_REFERENCE.finditer(expression):
        where = f"infra/main.bicep module {call.symbol} {param}: roles['{match.group(1)}']"
        brace = _enclosing(masked, match.start(), "{")
        if brace is None:
            problems.append(f"{where} is not inside a role assignment object")
            continue
        body = expression[brace : closing_bracket(masked, brace) + 1]
        union = re.search(r"union\(\s*([A-Za-z_][\w.]*)\s*,\s*$", expression[:brace])
        named = re.search(r"principalId:\s*([A-Za-z_][\w.]*)", body)
        principal_expression = union.group(1) if union else named.group(1) if named else ""
        principal = _PRINCIPALS.get(principal_expression)
        if principal is None:
            problems.append(f"{where}: principal {principal_expression!r} is not one it knows")
            continue
        scope = f"{call.symbol} {label}"
        container = re.search(r"container:\s*([^\n,}]+)", body)
        if container:
            known, name = try_evaluate(model.main, container.group(1).strip())
            if not known:
                problems.append(f"{where}: container {container.group(1)!r} is not static")
                continue
            scope = f"{call.symbol} container '{name}'"
        condition = None
        bracket = _enclosing(masked, brace, "[")
        if bracket is not None:
            ternary = re.search(r"([A-Za-z_][\w.]*)\s*\?\s*$", expression[:bracket])
            condition = ternary.group(1) if ternary else None
        grants.append(Grant(principal, match.group(1), scope, condition))
    return grants, problems


def role_grants(model: InfraModel) -> tuple[list[Grant], list[str]]:
    """Every role main.bicep grants, and the role references it could not read as grants."""
    grants: list[Grant] = []
    problems: list[str] = []
    seen = 0
    for call in model.main.modules.values():
        module = model.modules.get(call.path)
        for param, expression in call.params.items():
            references = len(_ROLE_REFERENCE.findall(expression))
            if not references:
                continue
            seen += references
            if call.path == "modules/eventgrid.bicep" and param == "deadLetterRoleDefinitionId":
                role = _ROLE_REFERENCE.fullmatch(expression.strip())
                known, container = try_evaluate(
                    model.main, call.params.get("deadLetterContainerName", "")
                )
                if role is None or not known:
                    problems.append(f"infra/main.bicep module {call.symbol} {param} is not static")
                    continue
                grants.append(
                    Grant("eventgrid", role.group(1), f"{call.symbol} container '{container}'")
                )
                continue
            target = _ROLE_PARAMS.get((call.path, param))
            if target is None:
                problems.append(
                    f"infra/main.bicep module {call.symbol} passes roles in {param}, which "
                    "infra/consistency.py _ROLE_PARAMS does not describe"
                )
                continue
            label, scope_text = target
            if module is not None and scope_text not in module.text:
                problems.append(
                    f"infra/{call.path} no longer assigns {param} with {scope_text!r}; "
                    "update infra/consistency.py _ROLE_PARAMS"
                )
            found, trouble = _grants_in(model, call, param, label)
            containers = any("container '" in grant.scope for grant in found)
            if containers and module is not None and _CONTAINER_SCOPE not in module.text:
                problems.append(f"infra/{call.path} has no container-scoped role assignments")
            grants += found
            problems += trouble
    everywhere = len(_ROLE_REFERENCE.findall(model.main.text))
    if everywhere != seen:
        problems.append(
            f"infra/main.bicep refers to roles[...] {everywhere} times but only {seen} are in "
            "module params infra/consistency.py reads"
        )
    # Cosmos DB data-plane roles are not Azure RBAC: the module takes principals, scoped to the
    # database (``scope: '${account.id}/dbs/${databaseName}'``).
    for call in model.calls("modules/cosmos.bicep"):
        text = call.params.get("dataContributorPrincipalIds", "[]").strip()
        for principal in (
            (item.strip() for item in array_items(text)) if text.startswith("[") else ()
        ):
            who = _PRINCIPALS.get(principal)
            if who is None:
                problems.append(
                    f"infra/main.bicep cosmos data contributor {principal!r} is unknown"
                )
                continue
            grants.append(
                Grant(who, "Cosmos DB Built-in Data Contributor", f"{call.symbol} database")
            )
    return grants, problems


def role_problems(
    grants: Sequence[Grant],
    role_ids: Mapping[str, str],
    documented: Sequence[DocumentedRole] = DOCUMENTED_ROLES,
) -> list[str]:
    """The Bicep grants exactly the documented roles (per principal, role, scope and condition),
    and every documented role id is the one ``infra/roles.json`` holds."""
    problems: list[str] = []
    wanted = {entry.grant: entry for entry in documented}
    actual = set(grants)
    for grant in sorted(actual - set(wanted), key=str):
        problems.append(
            f"infra/main.bicep grants {grant.principal} {grant.role!r} on {grant.scope}"
            f"{f' (if {grant.condition})' if grant.condition else ''}, which no documented role "
            "in infra/consistency.py DOCUMENTED_ROLES asks for"
        )
    for grant in sorted(set(wanted) - actual, key=str):
        entry = wanted[grant]
        problems.append(
            f"infra/main.bicep does not grant {grant.principal} {grant.role!r} on {grant.scope}"
            f"{f' (if {grant.condition})' if grant.condition else ''}: {entry.why} ({entry.doc})"
        )
    for entry in documented:
        if role_ids.get(entry.grant.role) != entry.role_id:
            problems.append(
                f"{entry.grant.role!r} is {entry.role_id} in the built-in roles reference but "
                f"{role_ids.get(entry.grant.role)!r} in infra/roles.json"
            )
    return problems


def triggered_queue_problems(names: Mapping[str, Any], triggered: set[str]) -> list[str]:
    """``names.json serviceBus.triggeredQueues`` (where the trigger's queue-scoped roles go) names
    exactly the queues a Service Bus trigger reads."""
    queues = names["serviceBus"]["queues"]
    keys = names["serviceBus"].get("triggeredQueues", [])
    problems = [
        f"infra/names.json serviceBus.triggeredQueues names {key!r}, which is not a queue key"
        for key in keys
        if key not in queues
    ]
    listed = {queues[key] for key in keys if key in queues}
    for queue in sorted(triggered - listed):
        problems.append(
            f"queue {queue!r} has a Service Bus trigger but is missing from infra/names.json "
            "serviceBus.triggeredQueues, so the app has no receive rights on it"
        )
    for queue in sorted(listed - triggered):
        problems.append(
            f"infra/names.json serviceBus.triggeredQueues lists {queue!r}, which no Service Bus "
            "trigger reads: the app would hold receive rights it does not use"
        )
    return problems


# ----------------------------------------------------------------------------------------------
# Network isolation
# ----------------------------------------------------------------------------------------------

PRIVATE_ENDPOINT_DOC = "https://learn.microsoft.com/azure/private-link/private-endpoint-dns"

PRIVATE_ENDPOINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "hostStorage": {"blob": ("blob",), "queue": ("queue",), "table": ("table",)},
    "batchStorage": {"blob": ("blob",), "queue": ("queue",)},
    "serviceBus": {"namespace": ("serviceBus",)},
    "eventHubs": {"namespace": ("serviceBus",)},
    "cosmos": {"Sql": ("cosmosSql",)},
    "keyVault": {"vault": ("keyVault",)},
    "openAi": {"account": ("openAi", "cognitiveServices")},
}
"""main.bicep service module -> the private endpoint sub-resources (group ids) it needs -> the keys
of infra/network.json privateDnsZones its zone group writes to (``PRIVATE_ENDPOINT_DOC``). Host
storage needs blob, queue and table: AzureWebJobsStorage uses all three (``HOST_STORAGE_DOC``)."""

_ISOLATION = "networkIsolation"
_PRIVATE_ENDPOINT_MODULE = "modules/private-endpoint.bicep"


def _outputs_of(expression: str) -> tuple[str, str] | None:
    """``(module symbol, output)`` of ``sym.outputs.x`` or ``sym!.outputs.x``."""
    match = re.fullmatch(r"([A-Za-z_]\w*)!?\.outputs\.([A-Za-z_]\w*)", expression.strip())
    return (match.group(1), match.group(2)) if match else None


def network_problems(model: InfraModel, scale: Mapping[str, Any]) -> list[str]:
    """With ``networkIsolation`` on, every service the app reaches has its private endpoints and
    DNS zone groups, its public network access is off, and the app joins the VNet through a
    Flex Consumption subnet; with it off (the default), nothing of that exists and access is
    public."""
    import ipaddress

    main = model.main
    problems: list[str] = []
    if main.params.get(_ISOLATION) != "false":
        return [f"infra/main.bicep has no 'param {_ISOLATION} bool = false'"]
    on = {_ISOLATION: True}
    off = {_ISOLATION: False}
    calls = main.modules

    def isolated_only(call: ModuleCall) -> None:
        if call.condition is None:
            problems.append(
                f"infra/main.bicep module {call.symbol} is deployed without {_ISOLATION}"
            )
            return
        for overrides, want in ((on, True), (off, False)):
            known, value = try_evaluate(main, call.condition, overrides)
            if not known or bool(value) != want:
                problems.append(
                    f"infra/main.bicep module {call.symbol}: condition {call.condition!r} is "
                    f"{value if known else 'not static'} with {_ISOLATION}={want}"
                )

    # The VNet and its subnets.
    network_calls = model.calls("modules/network.bicep")
    dns_calls = model.calls("modules/private-dns.bicep")
    if len(network_calls) != 1 or len(dns_calls) != 1:
        return [
            *problems,
            "infra/main.bicep must call modules/network.bicep and modules/private-dns.bicep once",
        ]
    vnet, dns = network_calls[0], dns_calls[0]
    isolated_only(vnet)
    isolated_only(dns)
    network_module = model.modules["modules/network.bicep"]
    delegations = {
        str(network_module.evaluate(e)) for e in network_module.property_values("serviceName")
    }
    if delegations != {"Microsoft.App/environments"}:
        problems.append(
            "infra/modules/network.bicep must delegate the app subnet to "
            f"Microsoft.App/environments (Flex Consumption), found {sorted(delegations)}"
        )
    try:
        space = ipaddress.ip_network(str(main.evaluate(vnet.params["addressSpace"])))
        app = main.evaluate(vnet.params["appSubnet"])
        endpoints = main.evaluate(vnet.params["privateEndpointSubnet"])
        app_net = ipaddress.ip_network(app["addressPrefix"])
        pe_net = ipaddress.ip_network(endpoints["addressPrefix"])
    except (KeyError, ValueError, TypeError) as error:
        return [*problems, f"infra/main.bicep network module: address plan unreadable ({error})"]
    for label, subnet in (("app", app_net), ("private endpoint", pe_net)):
        if not subnet.subnet_of(space):  # type: ignore[arg-type]
            problems.append(f"the {label} subnet {subnet} is outside the VNet {space}")
    if app_net.overlaps(pe_net):
        problems.append(f"the app subnet {app_net} overlaps the private endpoint subnet {pe_net}")
    # Azure keeps five addresses of every subnet; each Flex instance takes one.
    usable = app_net.num_addresses - 5
    if usable < int(scale["maximumInstanceCount"]):
        problems.append(
            f"the app subnet {app_net} has {usable} usable addresses, fewer than scale.json "
            f"maximumInstanceCount {scale['maximumInstanceCount']}"
        )
    zones_known, zones = try_evaluate(main, dns.params.get("zoneNames", ""))
    if not zones_known:
        problems.append("infra/main.bicep private-dns zoneNames are not static")
        zones = []
    if _outputs_of(dns.params.get("vnetId", "")) != (vnet.symbol, "id"):
        problems.append("infra/main.bicep private-dns is not linked to the VNet module's id")
    zone_names = main.evaluate("network.privateDnsZones") if "network" in main.vars else {}

    # The function app joins the VNet.
    for call in model.calls("modules/functionapp.bicep"):
        expression = call.params.get("virtualNetworkSubnetId", "")
        known, value = try_evaluate(main, expression, off)
        if not known or value != "":
            problems.append(f"infra/main.bicep {call.symbol}: no VNet integration unless isolated")
        if f"{vnet.symbol}!.outputs.appSubnetId" not in expression.replace(" ", ""):
            problems.append(
                f"infra/main.bicep {call.symbol} virtualNetworkSubnetId does not take the app "
                "subnet when isolated"
            )
    if "virtualNetworkSubnetId" not in "".join(
        model.modules["modules/functionapp.bicep"].property_values("virtualNetworkSubnetId")
    ):
        problems.append(
            "infra/modules/functionapp.bicep does not set the site's virtualNetworkSubnetId"
        )

    # One private endpoint call per service, with its zone groups.
    endpoint_module = model.modules.get(_PRIVATE_ENDPOINT_MODULE)
    if endpoint_module is None:
        return [*problems, f"infra/main.bicep never calls {_PRIVATE_ENDPOINT_MODULE}"]
    for resource_type in (
        "Microsoft.Network/privateEndpoints",
        "Microsoft.Network/privateEndpoints/privateDnsZoneGroups",
    ):
        if resource_type not in endpoint_module.resource_types:
            problems.append(f"infra/{_PRIVATE_ENDPOINT_MODULE} declares no {resource_type}")
    if len(
        re.findall(r"in groups:", endpoint_module.text)
    ) < 2 or "parent: endpoints[index]" not in (endpoint_module.text):
        problems.append(
            f"infra/{_PRIVATE_ENDPOINT_MODULE}: every endpoint needs its own DNS zone group "
            "(both loops over groups, the zone group's parent the endpoint)"
        )
    targets: dict[str, ModuleCall] = {}
    for call in model.calls(_PRIVATE_ENDPOINT_MODULE):
        target = _outputs_of(call.params.get("targetResourceId", ""))
        if target is None or target[1] != "id":
            problems.append(
                f"infra/main.bicep {call.symbol}: targetResourceId is not <module>.outputs.id"
            )
            continue
        targets[target[0]] = call
        isolated_only(call)
        if _outputs_of(call.params.get("subnetId", "")) != (vnet.symbol, "privateEndpointSubnetId"):
            problems.append(f"infra/main.bicep {call.symbol} is not in the private endpoint subnet")
        if dns.symbol not in call.entries.get("dependsOn", ""):
            problems.append(
                f"infra/main.bicep {call.symbol} does not depend on {dns.symbol}: its zone group "
                "would name zones that may not exist yet"
            )
    for service, groups in PRIVATE_ENDPOINTS.items():
        if service not in calls:
            problems.append(f"infra/main.bicep has no module {service}")
            continue
        endpoint = targets.get(service)
        if endpoint is None:
            problems.append(
                f"infra/main.bicep module {service} has no private endpoint "
                f"({_PRIVATE_ENDPOINT_MODULE} with targetResourceId {service}.outputs.id)"
            )
            continue
        known, declared = try_evaluate(main, endpoint.params.get("groups", ""), on)
        if not known:
            problems.append(f"infra/main.bicep {endpoint.symbol} groups are not static")
            continue
        by_group = {entry["groupId"]: tuple(entry["zones"]) for entry in declared}
        want = {
            group: tuple(zone_names.get(key, key) for key in keys) for group, keys in groups.items()
        }
        if by_group != want:
            problems.append(
                f"infra/main.bicep {endpoint.symbol}: endpoints {by_group} but {service} needs "
                f"{want} ({PRIVATE_ENDPOINT_DOC})"
            )
        for zone in sorted({z for zs in by_group.values() for z in zs} - set(zones)):
            problems.append(
                f"infra/main.bicep {endpoint.symbol} writes to zone {zone!r}, which private-dns "
                "does not create"
            )
    for extra in sorted(set(targets) - set(PRIVATE_ENDPOINTS)):
        problems.append(
            f"infra/main.bicep gives {extra} a private endpoint infra/consistency.py "
            "PRIVATE_ENDPOINTS does not describe"
        )

    # Public network access: Enabled by default, Disabled when isolated, in every service module.
    for service in PRIVATE_ENDPOINTS:
        service_call = calls.get(service)
        if service_call is None:
            continue
        module = model.modules[service_call.path]
        access_expression = service_call.params.get("publicNetworkAccess")
        if access_expression is None:
            problems.append(f"infra/main.bicep module {service} passes no publicNetworkAccess")
            continue
        for overrides, access in ((off, "Enabled"), (on, "Disabled")):
            known, value = try_evaluate(main, access_expression, overrides)
            if not known or value != access:
                problems.append(
                    f"infra/main.bicep module {service}: publicNetworkAccess is "
                    f"{value if known else 'not static'} with {_ISOLATION}={access == 'Disabled'}, "
                    f"expected {access}"
                )
                continue
            values = [
                module.evaluate(e, {"publicNetworkAccess": access})
                for e in module.property_values("publicNetworkAccess")
            ]
            if values != [access]:
                problems.append(
                    f"infra/{service_call.path}: the resource's publicNetworkAccess is {values} "
                    f"when the module is given {access}"
                )
            deny = "Deny" if access == "Disabled" else "Allow"
            for e in module.property_values("defaultAction"):
                action = module.evaluate(e, {"publicNetworkAccess": access})
                if action != deny:
                    problems.append(
                        f"infra/{service_call.path}: networkAcls defaultAction is {action} with "
                        f"publicNetworkAccess {access}, expected {deny}"
                    )
    service_bus = calls.get("serviceBus")
    if service_bus is not None:
        for overrides, sku in ((off, "Standard"), (on, "Premium")):
            _, value = try_evaluate(main, service_bus.params.get("skuName", "''"), overrides)
            if value != sku:
                problems.append(
                    f"infra/main.bicep serviceBus skuName is {value} with {_ISOLATION}="
                    f"{sku == 'Premium'}: private endpoints need Premium, Standard otherwise"
                )
    return problems


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


def check_repository(repo: Path = REPO) -> list[str]:
    """Every check, on this repository's artefacts."""
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    infra = repo / "infra"
    model = InfraModel.load(infra)
    names = load_json(infra / "names.json")
    sample = load_json(repo / "local.settings.sample.json")["Values"]
    host = load_json(repo / "host.json")
    scale = load_json(repo / "scale.json")
    deployed, problems = deployed_names(model)
    problems += setting_problems(settings_read_by_code(repo), model.app_settings, sample)
    problems += scale_problems(model, scale, project_python_version(repo))
    service_bus = model.modules["modules/servicebus.bicep"]
    locks = [str(service_bus.evaluate(e)) for e in service_bus.property_values("lockDuration")]
    limits: dict[str, float] = {}
    for setting in ("LLM_TIMEOUT_S", "LLM_WAIT_BUDGET_S"):
        known, value = model.setting_value(setting)
        if known:
            limits[f"Azure's {setting}"] = float(value)
    problems += lock_problems(locks, host, limits)
    bindings: list[Binding] = []
    if (repo / "function_app.py").is_file():
        bindings = bindings_of(load_function_app(repo))
        problems += binding_problems(
            bindings, sample, model, deployed, batch_function=names["functions"]["batchIngest"]
        )
        problems += always_ready_problems(scale, bindings)
    hubs = {
        PLACEHOLDER.sub(lambda m: sample.get(m.group(1), ""), str(b.fields["eventHubName"]))
        for b in bindings
        if b.type == "eventHubTrigger"
    }
    problems += keda_problems(
        load_keda(infra / "keda"),
        host,
        scale,
        model,
        deployed,
        sb_trigger_queues(bindings, sample),
        hubs,
    )
    grants, role_trouble = role_grants(model)
    problems += role_trouble + role_problems(grants, role_ids(infra))
    if bindings:
        problems += triggered_queue_problems(names, sb_trigger_queues(bindings, sample))
    problems += network_problems(model, scale)
    problems += topic_problems(model, names, scale)  # infra/topics.py
    return problems


def main() -> int:
    """Print every problem the checks find in this repository; exit 1 if there are any."""
    problems = check_repository()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
