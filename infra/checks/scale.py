"""Durations, Service Bus locks, Flex Consumption scale and always-ready instances."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from infra.checks.bindings import Binding
from infra.checks.model import InfraModel

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
        problems += model.param_problems(module, param, want, "the expected")
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
        problems += _always_ready_name_problems(
            name, count, triggers, limit=devhost_max, partitions=partitions
        )
    maximum = int(scale.get("maximumInstanceCount", 0))
    if total > maximum:
        problems.append(
            f"scale.json alwaysReady keeps {total} instances, more than maximumInstanceCount "
            f"{maximum}"
        )
    return problems


def _always_ready_name_problems(
    name: str, count: int, triggers: Mapping[str, str], *, limit: int, partitions: int
) -> list[str]:
    """``name`` is a group with a function in it, or ``function:<name>`` of a function that
    scales on its own, with no more instances than devhost can run for it."""
    if name in ALWAYS_READY_GROUPS:
        if not any(t in ALWAYS_READY_GROUPS[name] for t in triggers.values()):
            return [f"scale.json alwaysReady group {name!r} has no function in it"]
        return []
    if not name.startswith(ALWAYS_READY_FUNCTION):
        return [
            f"scale.json alwaysReady name {name!r} is neither a group "
            f"({', '.join(ALWAYS_READY_GROUPS)}) nor function:<name>"
        ]
    function = name[len(ALWAYS_READY_FUNCTION) :]
    trigger = triggers.get(function)
    if trigger is None:
        return [f"scale.json alwaysReady {name}: the app has no function {function!r}"]
    group = next((g for g, ts in ALWAYS_READY_GROUPS.items() if trigger in ts), None)
    if group is not None:
        return [
            f"scale.json alwaysReady {name}: a {trigger} function scales with its group; "
            f"name the group {group!r}"
        ]
    if trigger == "eventHubTrigger":
        limit = min(limit, partitions)
    if count > limit:
        return [
            f"scale.json alwaysReady {name}: {count} instances, more than devhost can "
            f"run for it ({limit})"
        ]
    return []
