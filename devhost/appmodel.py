"""The Function App as devhost sees it: functions and bindings from ``azure.functions``
introspection (``app.get_functions()``, called once), options from ``host.json``, and the
settings that ``%NAME%`` placeholders resolve through."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

UserFunction = Callable[..., Coroutine[Any, Any, Any]]
_PLACEHOLDER = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")

SERVICE_BUS = "serviceBusTrigger"
EVENT_HUB = "eventHubTrigger"
BLOB = "blobTrigger"
HTTP = "httpTrigger"


def parse_timespan(text: str) -> float:
    """Seconds in a .NET TimeSpan string as host.json writes them (``[d.]hh:mm:ss[.fff]``)."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise ConfigError("host.json", f"{text!r} is not a TimeSpan (hh:mm:ss)")
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


@dataclass(frozen=True)
class HostOptions:
    """The host.json options devhost honours, with the Functions host's defaults."""

    max_concurrent_calls: int = 16
    auto_complete_messages: bool = True
    max_auto_lock_renewal_s: float = 300.0
    max_event_batch_size: int = 100
    event_max_wait_s: float = 1.0
    blob_parallelism: int = 4
    function_timeout_s: float = 300.0

    @classmethod
    def from_file(cls, path: Path) -> HostOptions:
        data = json.loads(path.read_text(encoding="utf-8"))
        ext = data.get("extensions", {})
        sb = ext.get("serviceBus", {})
        eh = ext.get("eventHubs", {})
        blobs = ext.get("blobs", {})
        return cls(
            max_concurrent_calls=int(sb.get("maxConcurrentCalls", 16)),
            auto_complete_messages=bool(sb.get("autoCompleteMessages", True)),
            max_auto_lock_renewal_s=parse_timespan(
                sb.get("maxAutoLockRenewalDuration", "00:05:00")
            ),
            max_event_batch_size=int(eh.get("maxEventBatchSize", 100)),
            event_max_wait_s=parse_timespan(eh.get("maxWaitTime", "00:00:01")),
            blob_parallelism=int(blobs.get("maxDegreeOfParallelism", 4)),
            function_timeout_s=parse_timespan(data.get("functionTimeout", "00:05:00")),
        )


@dataclass(frozen=True)
class FunctionSpec:
    """One function: its trigger binding (placeholders resolved) and its user code."""

    name: str
    trigger_type: str
    trigger: Mapping[str, Any]
    user_function: UserFunction = field(repr=False)

    @property
    def source(self) -> str:
        """The queue, hub or container the trigger reads, or the HTTP route."""
        t = self.trigger
        if self.trigger_type == SERVICE_BUS:
            return str(t["queueName"])
        if self.trigger_type == EVENT_HUB:
            return str(t["eventHubName"])
        if self.trigger_type == BLOB:
            return str(t["path"]).split("/", 1)[0]
        return str(t.get("route", self.name))


@dataclass(frozen=True)
class AppModel:
    functions: tuple[FunctionSpec, ...]
    host: HostOptions
    root: Path

    def by_name(self, name: str) -> FunctionSpec:
        for spec in self.functions:
            if spec.name == name:
                return spec
        raise KeyError(f"no function named {name!r}")

    def of_type(self, trigger_type: str) -> list[FunctionSpec]:
        return [f for f in self.functions if f.trigger_type == trigger_type]


def resolve(value: Any, settings: Mapping[str, str]) -> Any:
    """Replace ``%NAME%`` with the setting, as the Functions host does; unknown names fail."""
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings or not settings[name]:
            raise ConfigError(name, "used by a binding but not set")
        return settings[name]

    return _PLACEHOLDER.sub(one, value)


_INDEXED: dict[int, list[Any]] = {}


def indexed_functions(app: Any) -> list[Any]:
    """``app.get_functions()``, once per app: indexing twice fails on duplicate names."""
    key = id(app)
    if key not in _INDEXED:
        _INDEXED[key] = list(app.get_functions())
    return _INDEXED[key]


def load_app(root: Path, settings: Mapping[str, str], *, module: str = "function_app") -> AppModel:
    """Import the Function App from ``root`` and describe its functions."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    app = importlib.import_module(module).app
    specs = []
    for function in indexed_functions(app):
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise ConfigError(function.get_function_name(), "needs exactly one trigger binding")
        trigger = {k: resolve(v, settings) for k, v in triggers[0].items()}
        specs.append(
            FunctionSpec(
                name=function.get_function_name(),
                trigger_type=str(trigger["type"]),
                trigger=trigger,
                user_function=function.get_user_function(),
            )
        )
    return AppModel(tuple(specs), HostOptions.from_file(root / "host.json"), root)
