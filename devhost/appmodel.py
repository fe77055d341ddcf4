"""The Function App as devhost sees it: functions, bindings and retry policies from
``azure.functions`` introspection (``app.get_functions()``, called once), options from
``host.json``, and the settings that ``%NAME%`` placeholders resolve through."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devhost.bindings import as_the_worker_calls
from functions.index import PLACEHOLDER, function_app, indexed_functions
from shared.errors import ConfigError

UserFunction = Callable[..., Coroutine[Any, Any, Any]]
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")

SERVICE_BUS = "serviceBusTrigger"
EVENT_HUB = "eventHubTrigger"
BLOB = "blobTrigger"
HTTP = "httpTrigger"
DEFAULT_CONSUMER_GROUP = "$Default"

EXPONENTIAL_BACKOFF = "exponential_backoff"
FIXED_DELAY = "fixed_delay"
_STRATEGIES = {
    "exponentialbackoff": EXPONENTIAL_BACKOFF,
    "fixeddelay": FIXED_DELAY,
}


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
class RetryPolicy:
    """A function's retry policy (``@app.retry``), as the Functions host applies it.

    ``max_retry_count`` counts retries after the first attempt; ``-1`` retries without bound.
    ``fixed_delay`` waits ``delay_interval_s`` before every retry. ``exponential_backoff``
    waits ``minimum_interval_s`` before the first retry and doubles the wait for each later
    one, up to ``maximum_interval_s`` (the host also adds a little jitter; devhost does not).
    """

    strategy: str
    max_retry_count: int
    delay_interval_s: float = 0.0
    minimum_interval_s: float = 0.0
    maximum_interval_s: float = 0.0

    @property
    def bounded(self) -> bool:
        return self.max_retry_count >= 0

    def exhausted(self, retries: int) -> bool:
        """Whether ``retries`` retries already made are all the policy allows."""
        return self.bounded and retries >= self.max_retry_count

    def delay_s(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (the first retry is 1)."""
        if self.strategy == FIXED_DELAY:
            return self.delay_interval_s
        doublings = min(max(0, retry - 1), 62)
        return min(self.maximum_interval_s, self.minimum_interval_s * 2.0**doublings)

    @classmethod
    def from_setting(cls, function: str, setting: Mapping[str, Any]) -> RetryPolicy:
        """Parse the ``retry_policy`` setting of ``function``.

        Accepts the Python decorator's names (``max_retry_count``, ``exponential_backoff``)
        and function.json's (``maxRetryCount``, ``exponentialBackoff``).
        """
        where = f"retry policy of {function}"

        def value(snake: str, camel: str) -> Any:
            found = setting.get(snake)
            return setting.get(camel) if found is None else found

        def seconds(snake: str, camel: str) -> float:
            text = value(snake, camel)
            if text is None:
                raise ConfigError(where, f"{strategy} needs {snake}")
            try:
                return parse_timespan(str(text))
            except ConfigError:
                raise ConfigError(where, f"{snake} {text!r} is not a TimeSpan (hh:mm:ss)") from None

        raw_strategy = str(value("strategy", "strategy") or "")
        strategy = _STRATEGIES.get(raw_strategy.replace("_", "").lower(), "")
        if not strategy:
            raise ConfigError(
                where, f"strategy {raw_strategy!r} is not exponential_backoff or fixed_delay"
            )
        raw_count = value("max_retry_count", "maxRetryCount")
        try:
            count = int(str(raw_count).strip())
        except ValueError:
            raise ConfigError(where, f"max_retry_count {raw_count!r} is not an integer") from None
        if count < -1:
            raise ConfigError(where, f"max_retry_count must be -1 (no limit) or more, not {count}")
        if strategy == FIXED_DELAY:
            return cls(strategy, count, delay_interval_s=seconds("delay_interval", "delayInterval"))
        minimum = seconds("minimum_interval", "minimumInterval")
        maximum = seconds("maximum_interval", "maximumInterval")
        if minimum > maximum:
            raise ConfigError(where, "minimum_interval is longer than maximum_interval")
        return cls(strategy, count, minimum_interval_s=minimum, maximum_interval_s=maximum)


@dataclass(frozen=True)
class FunctionSpec:
    """One function: its trigger binding (placeholders resolved), its user code and its retry
    policy, if it has one."""

    name: str
    trigger_type: str
    trigger: Mapping[str, Any]
    user_function: UserFunction = field(repr=False)
    retry: RetryPolicy | None = None

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

    @property
    def consumer_group(self) -> str:
        """The Event Hub consumer group the trigger reads as; the hub's default if unset."""
        return str(self.trigger.get("consumerGroup") or DEFAULT_CONSUMER_GROUP)


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

    return PLACEHOLDER.sub(one, value)


def load_app(root: Path, settings: Mapping[str, str], *, module: str = "function_app") -> AppModel:
    """Import the Function App from ``root`` and describe its functions."""
    app = function_app(root, module=module)
    specs = []
    for function in indexed_functions(app):
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise ConfigError(function.get_function_name(), "needs exactly one trigger binding")
        name = function.get_function_name()
        trigger = {k: resolve(v, settings) for k, v in triggers[0].items()}
        retry = function.get_settings_dict("retry_policy")
        specs.append(
            FunctionSpec(
                name=name,
                trigger_type=str(trigger["type"]),
                trigger=trigger,
                user_function=as_the_worker_calls(
                    function.get_user_function(),
                    trigger_name=str(trigger["name"]),
                    function_name=name,
                ),
                retry=RetryPolicy.from_setting(name, retry) if retry else None,
            )
        )
    return AppModel(tuple(specs), HostOptions.from_file(root / "host.json"), root)
