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

from infra.bicep_scan import (
    BicepFile,
    ModuleCall,
    ScanError,
    known_array_items,
    try_evaluate,
)

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
    from shared.messages import Stage

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
    """A fresh ``FunctionApp`` built by the repository's ``function_app.py``.

    ``get_functions()`` indexes an app once (a second call reports every function as a duplicate),
    and the imported ``function_app.app`` may already be indexed by the host or devhost in the same
    process; executing the file again builds a new app from the same blueprints.
    """
    import importlib.util

    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    spec = importlib.util.spec_from_file_location(
        "_function_app_for_checks", repo / "function_app.py"
    )
    if spec is None or spec.loader is None:
        raise ScanError(f"cannot load {repo / 'function_app.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def bindings_of(app: Any) -> list[Binding]:
    """The bindings of a ``func.FunctionApp`` (blueprints registered), via its own introspection."""
    found: list[Binding] = []
    for function in app.get_functions():
        for binding in function.get_bindings():
            found.append(Binding(function.get_function_name(), dict(binding.get_dict_repr())))
    return found


_PLACEHOLDER = re.compile(r"%([^%]+)%")
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
        for placeholder in _PLACEHOLDER.findall(raw):
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
        _PLACEHOLDER.sub(
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
    hubs = {
        _PLACEHOLDER.sub(lambda m: sample.get(m.group(1), ""), str(b.fields["eventHubName"]))
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
