"""KEDA ScaledObjects: the Functions targets and limits, on resources the Bicep creates."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from infra.bicep_scan import (
    try_evaluate,
)
from infra.checks.model import Deployed, InfraModel

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
