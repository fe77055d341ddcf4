"""Topics on the devhost broker: fan-out by correlation filter, duplicate detection per topic,
subscriptions received and settled as queues."""

from __future__ import annotations

from pathlib import Path

import pytest

from devhost.broker import Broker, SendSpec, UnknownTopic
from devhost.outcomes import OutcomesTopic, decode, outcome_messages


def _spec(message_id: str, **properties: str) -> SendSpec:
    return SendSpec(body=b"{}", message_id=message_id, application_properties=properties)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    with Broker(tmp_path / "broker.sqlite3") as made:
        made.ensure_topic("outcomes")
        made.ensure_subscription("outcomes", "chat", rules=[{"channel": "chat"}])
        made.ensure_subscription("outcomes", "billing", rules=[{"team": "billing"}])
        made.ensure_subscription("outcomes", "everything")
        yield made


def _ids(broker: Broker, sub: str) -> list[str]:
    return [m.message_id for m in broker.peek(f"outcomes/Subscriptions/{sub}")]


def test_a_message_reaches_every_subscription_whose_filter_matches(broker: Broker) -> None:
    assert broker.send_to_topic("outcomes", [_spec("m1", channel="chat", team="billing")]) == [True]
    assert broker.send_to_topic("outcomes", [_spec("m2", channel="email")]) == [True]
    assert _ids(broker, "chat") == ["m1"]
    assert _ids(broker, "billing") == ["m1"]
    assert _ids(broker, "everything") == ["m1", "m2"]


def test_a_repeated_message_id_is_dropped_for_every_subscription(broker: Broker) -> None:
    broker.send_to_topic("outcomes", [_spec("m1", channel="chat")])
    received = broker.receive("outcomes/Subscriptions/chat")
    broker.complete("outcomes/Subscriptions/chat", received[0].lock_token)
    # Completed on one subscription, still a duplicate on the topic within its window.
    assert broker.send_to_topic("outcomes", [_spec("m1", channel="chat")]) == [False]
    assert _ids(broker, "chat") == []
    assert _ids(broker, "everything") == ["m1"]
    assert broker.topic_totals("outcomes") == (1, 1)


def test_system_properties_can_be_filtered_on(broker: Broker) -> None:
    broker.ensure_subscription("outcomes", "by-subject", rules=[{"subject": "reply"}])
    broker.send_to_topic(
        "outcomes",
        [
            SendSpec(body=b"{}", message_id="a", subject="reply"),
            SendSpec(body=b"{}", message_id="b", subject="handover"),
        ],
    )
    assert _ids(broker, "by-subject") == ["a"]


def test_a_topic_never_declared_is_refused(tmp_path: Path) -> None:
    with Broker(tmp_path / "other.sqlite3") as broker:
        with pytest.raises(UnknownTopic):
            broker.send_to_topic("outcomes", [_spec("m1")])
        broker.ensure_topic("outcomes")
        with pytest.raises(UnknownTopic):
            broker.send_to_topic("elsewhere", [_spec("m1")])


def test_the_topic_infra_deploys_is_the_one_devhost_declares(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker.sqlite3") as broker:
        topic = OutcomesTopic.from_files()
        topic.declare(broker)
        names = {s.name for s in broker.subscriptions(topic.name)}
        assert names == set(topic.subscriptions)
        broker.send_to_topic(
            topic.name,
            [
                SendSpec(
                    body=b'{"kind": "handover"}',
                    message_id="h",
                    application_properties={"channel": "sms", "team": "legal"},
                )
            ],
        )
        assert [m.message_id for m in outcome_messages(broker, topic)] == ["h"]
        assert [m.message_id for m in outcome_messages(broker, topic, "delivery-sms")] == ["h"]
        assert [m.message_id for m in outcome_messages(broker, topic, "team-legal")] == ["h"]
        assert outcome_messages(broker, topic, "delivery-chat") == []
        assert decode(outcome_messages(broker, topic)[0]) == {"kind": "handover"}


def test_correlation_filters_match_as_service_bus_documents(broker: Broker) -> None:
    """A correlation filter's conditions are ANDed and compare strings case-sensitively;
    a subscription's rules without actions are ORed and yield one copy of a message however
    many match (CorrelationRuleFilter remarks,
    https://learn.microsoft.com/dotnet/api/azure.messaging.servicebus.administration.correlationrulefilter;
    "Topic filters and actions",
    https://learn.microsoft.com/azure/service-bus-messaging/topic-filters)."""
    broker.ensure_subscription(
        "outcomes", "chat-billing", rules=[{"channel": "chat", "team": "billing"}]
    )
    broker.ensure_subscription(
        "outcomes", "either", rules=[{"channel": "chat"}, {"team": "billing"}]
    )
    broker.send_to_topic(
        "outcomes",
        [
            _spec("both", channel="chat", team="billing"),
            _spec("chat-only", channel="chat", team="shipping"),
            _spec("upper", channel="Chat", team="Billing"),
        ],
    )
    assert _ids(broker, "chat-billing") == ["both"]  # AND: every condition must match
    assert _ids(broker, "either") == ["both", "chat-only"]  # OR, one copy of "both"
    assert _ids(broker, "chat") == ["both", "chat-only"]  # "Chat" is not "chat"
