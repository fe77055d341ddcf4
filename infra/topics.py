"""The outcomes topic's consistency: names.json, scale.json, main.bicep, the Service Bus
module and the code's outcome messages agree (run by ``infra/consistency.py``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.checks.model import InfraModel

TOPIC_POLICY_KEYS = (
    "duplicateDetectionWindowSeconds",
    "subscriptionLockDurationSeconds",
    "subscriptionMaxDeliveryCount",
)


def topic_problems(
    model: InfraModel, names: Mapping[str, Any], scale: Mapping[str, Any]
) -> list[str]:
    """The outcomes topic: main.bicep hands names.json's topic to the Service Bus module, which
    declares the topic, its subscriptions and their rules; the app setting names it; every
    channel a request can arrive on has a delivery subscription and every team an escalation
    can go to has one; filters name only properties outcome messages carry; scale.json holds
    the topic policy."""
    topic = names.get("serviceBus", {}).get("topics", {}).get("outcomes")
    if not isinstance(topic, dict) or not isinstance(topic.get("subscriptions"), dict):
        return ["infra/names.json has no serviceBus.topics.outcomes {name, subscriptions}"]
    queues = names.get("serviceBus", {}).get("queues", {}).values()
    return [
        *_wiring_problems(model, topic, queues),
        *_subscription_problems(topic["subscriptions"]),
        *_policy_problems(scale),
    ]


def _wiring_problems(
    model: InfraModel, topic: Mapping[str, Any], queues: Collection[str]
) -> list[str]:
    """main.bicep passes names.json's topic to the Service Bus module, which declares it, and
    ``TOPIC_OUTCOMES`` names it; no queue has its name."""
    problems: list[str] = []
    name = topic.get("name")
    problems += model.param_problems(
        "modules/servicebus.bicep", "outcomesTopic", topic, "names.json serviceBus.topics.outcomes"
    )
    module = model.modules.get("modules/servicebus.bicep")
    for kind in ("topics", "topics/subscriptions", "topics/subscriptions/rules"):
        full = f"Microsoft.ServiceBus/namespaces/{kind}"
        if module is None or full not in module.resource_types:
            problems.append(f"infra/modules/servicebus.bicep declares no {full}")
    known, setting = model.setting_value("TOPIC_OUTCOMES")
    if not known or setting != name:
        problems.append(f"infra/main.bicep sets TOPIC_OUTCOMES to {setting!r}, not {name!r}")
    if name in queues:
        problems.append(f"the outcomes topic {name!r} has the name of a queue")
    return problems


def _subscription_problems(subscriptions: Mapping[str, Any]) -> list[str]:
    """Filters name only properties outcome messages carry, with values that exist; every
    channel and every team has its subscription."""
    from shared.domain.messages import Channel
    from shared.domain.outbox import OUTCOME_PROPERTY_NAMES
    from shared.domain.results import Team

    problems: list[str] = []
    for sub, rule in subscriptions.items():
        if rule is None:
            continue
        if not isinstance(rule, dict) or not rule:
            problems.append(f"names.json outcomes subscription {sub!r}: a filter is an object")
            continue
        for key in rule:
            if key not in OUTCOME_PROPERTY_NAMES:
                problems.append(
                    f"names.json outcomes subscription {sub!r} filters on {key!r}, which no "
                    "outcome message carries"
                )
        if "channel" in rule and rule["channel"] not in {c.value for c in Channel}:
            problems.append(
                f"names.json outcomes subscription {sub!r}: no channel {rule['channel']!r}"
            )
        if "team" in rule and rule["team"] not in {t.value for t in Team}:
            problems.append(f"names.json outcomes subscription {sub!r}: no team {rule['team']!r}")
    filters = list(subscriptions.values())
    for channel in Channel:
        if {"channel": channel.value} not in filters:
            problems.append(f"no outcomes subscription delivers to channel {channel.value!r}")
    for team in Team:
        if {"team": team.value} not in filters:
            problems.append(f"no outcomes subscription notifies team {team.value!r}")
    return problems


def _policy_problems(scale: Mapping[str, Any]) -> list[str]:
    """scale.json holds the topic policy, within what keeps deliveries safe."""
    policy = scale.get("topics")
    if not isinstance(policy, dict) or any(k not in policy for k in TOPIC_POLICY_KEYS):
        return [f"scale.json topics must hold {', '.join(TOPIC_POLICY_KEYS)}"]
    problems: list[str] = []
    if policy["duplicateDetectionWindowSeconds"] < 60:
        problems.append("scale.json topics duplicateDetectionWindowSeconds is under 60")
    if policy["subscriptionMaxDeliveryCount"] < 2:
        problems.append("scale.json topics subscriptionMaxDeliveryCount is under 2")
    return problems
