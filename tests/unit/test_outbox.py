"""The outbox: every final outcome is exactly one message on the ``outcomes`` topic.

The pipeline runs through its real triggers over the devhost broker (queues, the topic and its
subscriptions as infra/ declares them) and a real SQLite store; the broker's clock is moved by
hand to release rescheduled messages. Faults are injected into the publisher at the send of an
outcome message: before it (the store write landed, the send did not) and after it (the send
landed, the worker died before marking it sent).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.outcomes import EVERYTHING
from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import Envelope, Stage
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, hub_event
from tests.support.fakes import (
    ESCALATION,
    INTENT_ANGRY,
    REPLY,
    ScriptedModel,
    happy_model,
)
from tests.support.outcome_fixtures import *  # noqa: F403  (clock, broker, closing)
from tests.support.stage_runner import (
    FaultyPublisher,
    on_subscription,
    run_stages,
)

REQUEST = {"customerId": "cust-1", "text": "Refund for order A-1001 please", "channel": "chat"}


def _start(broker: Broker, settings: Settings, model: ScriptedModel, **faults: int) -> Any:
    publisher = FaultyPublisher(BrokerPublisher(broker), **faults)
    bootstrap.configure(settings=settings, publisher=publisher, llm=model)
    return publisher


async def _ingest(body: dict[str, Any], sequence: int = 1) -> None:
    await app_functions()["ingest"]([hub_event(json.dumps(body).encode(), sequence=sequence)])


async def _conversation(cid: str) -> dict[str, Any]:
    services = await bootstrap.get_services()
    view = await services.pipeline.conversation(cid)
    assert view is not None
    return view


async def test_an_answered_conversation_emits_one_reply_to_its_channel(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    _start(broker, settings, happy_model())
    await _ingest(REQUEST)
    await run_stages(broker, clock, settings)
    [message] = on_subscription(broker, EVERYTHING)
    assert message["kind"] == "reply"
    assert message["outcome"] == "answered"
    assert message["text"] == REPLY["reply"]
    assert on_subscription(broker, "delivery-chat") == [message]
    assert on_subscription(broker, "delivery-email") == []
    assert all(on_subscription(broker, f"team-{t}") == [] for t in ("billing", "legal"))
    view = await _conversation(message["conversationId"])
    [entry] = view["outbox"]
    assert entry["messageId"] == message["messageId"] == f"{view['id']}:t0:answered"
    assert entry["sentAt"] is not None


async def test_an_escalation_emits_one_handover_with_the_work_item(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": [ESCALATION]})
    _start(broker, settings, model)
    await _ingest(REQUEST)
    await run_stages(broker, clock, settings)
    [message] = on_subscription(broker, EVERYTHING)
    assert message["kind"] == "handover"
    assert "billing team" in message["text"]
    item = message["workItem"]
    assert (item["team"], item["priority"]) == ("billing", "high")
    due = item["dueAt"]
    assert due > message["at"]  # high priority: due four hours after the escalation
    assert on_subscription(broker, "team-billing") == [message]
    assert on_subscription(broker, "delivery-chat") == [message]
    assert on_subscription(broker, "team-legal") == []


async def test_a_send_that_fails_after_the_store_write_is_retried_and_lands_once(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    publisher = _start(broker, settings, happy_model(), before=1)
    await _ingest(REQUEST)
    await run_stages(broker, clock, settings)
    assert publisher.topic_sends == 2  # the failed one, then the rescheduled message's
    [message] = on_subscription(broker, EVERYTHING)
    view = await _conversation(message["conversationId"])
    assert view["status"] == "answered"
    assert [s["key"] for s in view["stages"]] == ["intent:0", "response:0", "critic:0"]
    assert broker.topic_totals("outcomes") == (1, 0)


async def test_a_worker_killed_between_the_send_and_its_mark_emits_no_duplicate(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    publisher = _start(broker, settings, happy_model(), after=1)
    await _ingest(REQUEST)
    counts = await run_stages(broker, clock, settings)
    assert counts["crashed"] == 1
    assert publisher.topic_sends == 2  # sent, 'killed'; the redelivery sends it again
    assert len(on_subscription(broker, EVERYTHING)) == 1
    assert len(on_subscription(broker, "delivery-chat")) == 1
    assert broker.topic_totals("outcomes") == (1, 1)  # the second copy was dropped
    view = await _conversation(on_subscription(broker, EVERYTHING)[0]["conversationId"])
    assert view["outbox"][0]["sentAt"] is not None


async def test_a_redelivered_final_stage_message_never_emits_again(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    publisher = _start(broker, settings, happy_model())
    await _ingest(REQUEST)
    await run_stages(broker, clock, settings)
    [message] = on_subscription(broker, EVERYTHING)
    # The critic's message arrives again (a lost completion, a replay from the dead letters).
    cid = message["conversationId"]
    broker.send(
        settings.queues.critic,
        _critic_envelope(cid),
        message_id=f"{cid}:critic:0:again",
    )
    await run_stages(broker, clock, settings)
    assert publisher.topic_sends == 1  # marked sent: not even offered to the topic again
    assert len(on_subscription(broker, EVERYTHING)) == 1


async def test_many_conversations_with_faults_lose_none_and_duplicate_none(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    publisher = _start(broker, settings, happy_model(), before=7, after=7)
    for n in range(20):
        await _ingest({**REQUEST, "text": f"Where is order {n}?"}, sequence=n + 1)
    counts = await run_stages(broker, clock, settings)
    messages = on_subscription(broker, EVERYTHING)
    ids = [m["conversationId"] for m in messages]
    assert len(ids) == 20
    assert len(set(ids)) == 20
    assert len(on_subscription(broker, "delivery-chat")) == 20
    assert counts["crashed"] == 7
    assert publisher.topic_sends == 20 + 7 + 7
    assert broker.topic_totals("outcomes") == (20, 7)


def _critic_envelope(cid: str) -> bytes:
    now = datetime.now(UTC)
    return Envelope(
        message_id=f"{cid}:critic:0",
        conversation_id=cid,
        customer_id=REQUEST["customerId"],
        stage=Stage.CRITIC,
        revision=0,
        created_at=now,
        sent_at=now,
    ).to_bytes()
