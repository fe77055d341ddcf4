"""The outcomes topic on devhost: declared from ``infra/names.json`` and ``scale.json`` (the
same topic, subscriptions and correlation filters Bicep deploys), and read back for
``devhost outbox`` and the demo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.broker import Broker, ReceivedMessage
from devhost.environment import PROJECT_ROOT

NAMES_FILE = PROJECT_ROOT / "infra" / "names.json"
SCALE_FILE = PROJECT_ROOT / "scale.json"
EVERYTHING = "analytics"
"""The subscription without a filter: it sees every outcome message."""


@dataclass(frozen=True)
class OutcomesTopic:
    name: str
    subscriptions: dict[str, dict[str, Any] | None]
    policy: dict[str, Any]

    @classmethod
    def from_files(cls, names: Path = NAMES_FILE, scale: Path = SCALE_FILE) -> OutcomesTopic:
        topic = json.loads(names.read_text(encoding="utf-8"))["serviceBus"]["topics"]["outcomes"]
        policy = json.loads(scale.read_text(encoding="utf-8")).get("topics", {})
        return cls(str(topic["name"]), dict(topic["subscriptions"]), dict(policy))

    def declare(self, broker: Broker, *, lock_duration_s: float | None = None) -> None:
        """Declare the topic and every subscription with its rule; safe to repeat."""
        broker.ensure_topic(
            self.name,
            duplicate_window_s=float(self.policy.get("duplicateDetectionWindowSeconds", 600)),
        )
        for sub, rule in self.subscriptions.items():
            broker.ensure_subscription(
                self.name,
                sub,
                rules=None if rule is None else [rule],
                lock_duration_s=lock_duration_s
                or float(self.policy.get("subscriptionLockDurationSeconds", 60)),
                max_delivery_count=int(self.policy.get("subscriptionMaxDeliveryCount", 10)),
            )

    def entity(self, subscription: str) -> str:
        return f"{self.name}/Subscriptions/{subscription}"

    def delivery_subscription(self, channel: str) -> str | None:
        """The subscription that delivers to ``channel``, if any."""
        for sub, rule in self.subscriptions.items():
            if rule == {"channel": channel}:
                return sub
        return None


def declare_outcomes(broker: Broker) -> OutcomesTopic:
    """Declare the outcomes topic as infra/ deploys it; return it."""
    topic = OutcomesTopic.from_files()
    topic.declare(broker)
    return topic


def outcome_messages(
    broker: Broker, topic: OutcomesTopic, subscription: str = EVERYTHING, *, limit: int = 1000
) -> list[ReceivedMessage]:
    """The messages waiting on ``subscription``, oldest first, without taking them."""
    return broker.peek(topic.entity(subscription), limit=limit)


def decode(message: ReceivedMessage) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.body)
    return body
