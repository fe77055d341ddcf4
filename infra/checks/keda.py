"""KEDA ScaledObjects: the Functions targets and limits, on resources the Bicep creates."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.bicep_scan import try_evaluate
from infra.checks.model import Deployed, InfraModel

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
    auths = {
        doc["metadata"]["name"]: doc
        for doc in documents
        if doc.get("kind") == "TriggerAuthentication"
    }
    problems: list[str] = []
    for name, doc in auths.items():
        provider = doc.get("spec", {}).get("podIdentity", {}).get("provider")
        if provider != "azure-workload":
            problems.append(f"TriggerAuthentication {name} uses {provider!r}, not azure-workload")
    check = _ScaledObjects(model, deployed, _Targets.of(host, scale), set(auths))
    for doc in documents:
        if doc.get("kind") == "ScaledObject":
            problems += check.scaled_object(doc)
    for queue in sorted(triggered_queues - check.queues):
        problems.append(f"queue {queue!r} has a Service Bus trigger but no KEDA ScaledObject")
    for queue in sorted(check.queues - triggered_queues):
        problems.append(
            f"a KEDA ScaledObject scales on queue {queue!r}, which no function is triggered by"
        )
    for hub in sorted(triggered_hubs - check.hubs):
        problems.append(f"event hub {hub!r} has a trigger but no KEDA ScaledObject")
    return problems


@dataclass(frozen=True)
class _Targets:
    """The Functions targets (host.json) and limits (scale.json) KEDA must restate."""

    max_calls: str
    batch_size: str
    max_instances: int
    partitions: int
    step_up: Any

    @classmethod
    def of(cls, host: Mapping[str, Any], scale: Mapping[str, Any]) -> _Targets:
        extensions = host.get("extensions", {})
        return cls(
            max_calls=str(extensions.get("serviceBus", {}).get("maxConcurrentCalls")),
            batch_size=str(extensions.get("eventHubs", {}).get("maxEventBatchSize")),
            max_instances=int(scale["maximumInstanceCount"]),
            partitions=int(scale["eventHubPartitions"]),
            step_up=scale.get("devhost", {}).get("maxStepUp"),
        )


@dataclass
class _ScaledObjects:
    """Checks ScaledObjects one by one, gathering the queues and hubs they cover."""

    model: InfraModel
    deployed: Deployed
    targets: _Targets
    auths: set[str]
    queues: set[str] = field(default_factory=set)
    hubs: set[str] = field(default_factory=set)

    def value_of(self, raw: Any) -> str | None:
        """A metadata value, a ${OUTPUT} placeholder resolved through main.bicep when static."""
        text = str(raw)
        match = _ENV_PLACEHOLDER.fullmatch(text)
        if match is None:
            return text
        outputs = self.model.main.outputs
        if match.group(1) not in outputs:
            return None
        known, value = try_evaluate(self.model.main, outputs[match.group(1)])
        return str(value) if known else None

    def scaled_object(self, doc: Mapping[str, Any]) -> list[str]:
        name = doc["metadata"]["name"]
        spec = doc.get("spec", {})
        problems: list[str] = []
        if spec.get("minReplicaCount") != 0:
            problems.append(f"ScaledObject {name}: minReplicaCount should be 0 (scale to zero)")
        policies = (
            spec.get("advanced", {})
            .get("horizontalPodAutoscalerConfig", {})
            .get("behavior", {})
            .get("scaleUp", {})
            .get("policies", [])
        )
        step_up = self.targets.step_up
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
            problems += self.trigger(f"ScaledObject {name}", spec, trigger)
        return problems

    def trigger(self, where: str, spec: Mapping[str, Any], trigger: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        metadata = trigger.get("metadata", {})
        for raw in metadata.values():
            for placeholder in _ENV_PLACEHOLDER.findall(str(raw)):
                if placeholder not in self.model.main.outputs:
                    problems.append(
                        f"{where}: ${{{placeholder}}} is not an output of infra/main.bicep"
                    )
        reference = trigger.get("authenticationRef", {}).get("name")
        if reference not in self.auths:
            problems.append(
                f"{where}: authenticationRef {reference!r} is not a TriggerAuthentication here"
            )
        kind = trigger.get("type")
        if kind == "azure-servicebus":
            problems += self.service_bus(where, spec, metadata)
        elif kind == "azure-eventhub":
            problems += self.event_hub(where, spec, metadata)
        else:
            problems.append(
                f"{where}: trigger type {kind!r} is not checked by infra/checks/keda.py"
            )
        return problems

    def service_bus(
        self, where: str, spec: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> list[str]:
        problems: list[str] = []
        queue = self.value_of(metadata.get("queueName"))
        if queue is not None:
            self.queues.add(queue)
            if queue not in self.deployed.queues:
                problems.append(f"{where}: queue {queue!r} is not created by infra/main.bicep")
        if str(metadata.get("messageCount")) != self.targets.max_calls:
            problems.append(
                f"{where}: messageCount {metadata.get('messageCount')!r} differs from "
                f"host.json serviceBus.maxConcurrentCalls {self.targets.max_calls}"
            )
        if spec.get("maxReplicaCount") != self.targets.max_instances:
            problems.append(
                f"{where}: maxReplicaCount {spec.get('maxReplicaCount')} differs from "
                f"scale.json maximumInstanceCount {self.targets.max_instances}"
            )
        return problems

    def event_hub(
        self, where: str, spec: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> list[str]:
        problems: list[str] = []
        hub = self.value_of(metadata.get("eventHubName"))
        group = self.value_of(metadata.get("consumerGroup"))
        if hub is not None:
            self.hubs.add(hub)
            if hub not in self.deployed.hubs:
                problems.append(f"{where}: event hub {hub!r} is not created by infra/main.bicep")
        if group is not None and group not in self.deployed.consumer_groups:
            problems.append(f"{where}: consumer group {group!r} is not created by infra/main.bicep")
        if str(metadata.get("unprocessedEventThreshold")) != self.targets.batch_size:
            problems.append(
                f"{where}: unprocessedEventThreshold "
                f"{metadata.get('unprocessedEventThreshold')!r} differs from host.json "
                f"eventHubs.maxEventBatchSize {self.targets.batch_size}"
            )
        ceiling = min(self.targets.max_instances, self.targets.partitions)
        if spec.get("maxReplicaCount") != ceiling:
            problems.append(
                f"{where}: maxReplicaCount {spec.get('maxReplicaCount')} should be "
                f"{ceiling} (scale.json maximumInstanceCount capped by eventHubPartitions)"
            )
        if metadata.get("checkpointStrategy") != "azureFunction":
            problems.append(f"{where}: checkpointStrategy should be azureFunction")
        return problems
