"""Multi-turn conversations: a follow-up naming its conversation runs the agents again with
the earlier turns in view, on turn-scoped stage keys; on an escalated conversation it goes to
the work item; while a turn runs it waits; its history is bounded by dropping the oldest."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import azure.functions as func

from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.outcomes import EVERYTHING
from shared import bootstrap
from shared.config import Settings
from shared.domain.turns import MAX_TURNS, EarlierTurn, bounded_history, render_earlier
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, hub_batch, stored_event
from tests.support.fakes import (
    APPROVE,
    ESCALATION,
    INTENT_ANGRY,
    INTENT_REFUND,
    REPLY,
    ScriptedModel,
)
from tests.support.outcome_fixtures import *  # noqa: F403  (clock, broker, closing)
from tests.support.stage_runner import on_subscription, run_stages

FIRST = {"customerId": "cust-1", "text": "Refund order A-1001 please", "channel": "chat"}
SECOND_REPLY = {"reply": "The refund for A-1001 reached your card on Monday."}


def test_the_history_keeps_the_latest_turns_within_the_budget_and_drops_the_oldest() -> None:
    turns = [EarlierTurn(n, "x" * 400, "y" * 400) for n in range(5)]  # 200 tokens each
    kept, omitted = bounded_history(turns, budget=450)
    assert [t.turn for t in kept] == [3, 4]
    assert omitted == 3
    text = render_earlier(kept, omitted)
    assert "(3 earlier turn(s) left out)" in text
    assert text.index("turn=3") < text.index("turn=4")
    assert bounded_history([], budget=10) == ((), 0)
    assert render_earlier((), 0) == ""


def _model(*, intents: list[Any], replies: list[Any]) -> ScriptedModel:
    return ScriptedModel(
        answers={
            "intent": intents,
            "response": replies,
            "critic": [APPROVE],
            "escalation": [ESCALATION],
        }
    )


async def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = func.HttpRequest(
        method="POST", url="http://localhost/api/requests", body=json.dumps(body).encode()
    )
    response = await app_functions()["post_request"](req)
    return response.status_code, json.loads(response.get_body())


async def _view(cid: str) -> dict[str, Any]:
    view = await (await bootstrap.get_services()).pipeline.conversation(cid)
    assert view is not None
    return view


def _configure_refund_then_second_reply(broker: Broker, settings: Settings) -> ScriptedModel:
    """The model for a refund request answered once, then a follow-up answered again."""
    model = _model(intents=[INTENT_REFUND], replies=[REPLY, SECOND_REPLY])
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    return model


async def test_a_second_turn_runs_the_agents_with_the_first_turn_in_view(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _configure_refund_then_second_reply(broker, settings)
    status, first = await post(FIRST)
    cid = first["conversationId"]
    await run_stages(broker, clock, settings)
    follow = {**FIRST, "text": "Has the money arrived yet?", "conversationId": cid}
    status, second = await post(follow)
    assert (status, second["conversationId"]) == (202, cid)
    await run_stages(broker, clock, settings)

    view = await _view(cid)
    assert view["status"] == "answered"
    assert view["turn"] == 1
    assert view["outcome"]["reply"] == SECOND_REPLY["reply"]
    keys = [s["key"] for s in view["stages"]]
    assert keys == [
        "intent:0",
        "response:0",
        "critic:0",
        "t1:intent:0",
        "t1:response:0",
        "t1:critic:0",
    ]
    assert [t["turn"] for t in view["turns"]] == [0]
    assert view["turns"][0]["reply"] == REPLY["reply"]
    second_draft = [c for c in model.calls if c.stage == "response"][1]
    prompt = second_draft.messages[-1]["content"]
    assert "Refund order A-1001 please" in prompt  # the first turn's message ...
    assert REPLY["reply"] in prompt  # ... and the reply it got
    assert "Has the money arrived yet?" in prompt
    messages = on_subscription(broker, EVERYTHING)
    assert [m["messageId"] for m in messages] == [f"{cid}:t0:answered", f"{cid}:t1:answered"]


async def test_a_follow_up_on_an_escalated_conversation_goes_to_the_work_item(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _model(intents=[INTENT_ANGRY], replies=[REPLY])
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    _, first = await post(FIRST)
    cid = first["conversationId"]
    await run_stages(broker, clock, settings)
    calls = len(model.calls)
    follow = {**FIRST, "text": "Hello? Anyone there?", "conversationId": cid}
    assert (await post(follow))[0] == 202
    await run_stages(broker, clock, settings)
    assert len(model.calls) == calls  # no agent ran
    view = await _view(cid)
    assert view["status"] == "escalated"
    history = view["workItem"]["history"]
    assert (history[-1]["role"], history[-1]["text"]) == ("customer", "Hello? Anyone there?")
    assert view["audit"][-1]["action"] == "wrote"
    assert view["audit"][-1]["who"] == "customer:cust-1"
    assert len(on_subscription(broker, EVERYTHING)) == 1  # the handover only


async def test_a_follow_up_while_a_turn_runs_waits_and_then_runs(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    _configure_refund_then_second_reply(broker, settings)
    _, first = await post(FIRST)
    cid = first["conversationId"]
    follow = {**FIRST, "text": "Also, the lid is cracked.", "conversationId": cid}
    assert (await post(follow))[0] == 202
    assert (await _view(cid))["queued"][0]["text"] == "Also, the lid is cracked."
    await run_stages(broker, clock, settings)
    view = await _view(cid)
    assert (view["turn"], view["status"]) == (1, "answered")
    assert "queued" not in view
    assert len(on_subscription(broker, EVERYTHING)) == 2


async def test_a_follow_up_is_refused_for_a_conversation_of_someone_else(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _model(intents=[INTENT_REFUND], replies=[REPLY])
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    _, first = await post(FIRST)
    intruder = {**FIRST, "customerId": "cust-2", "conversationId": first["conversationId"]}
    status, refused = await post(intruder)
    assert (status, refused["code"]) == (400, "unknown_conversation")
    status, refused = await post({**FIRST, "conversationId": "c-nothing"})
    assert (status, refused["code"]) == (400, "unknown_conversation")


async def test_a_redelivered_follow_up_is_one_turn(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _configure_refund_then_second_reply(broker, settings)
    _, first = await post(FIRST)
    cid = first["conversationId"]
    await run_stages(broker, clock, settings)
    event = stored_event(json.dumps({**FIRST, "text": "More?", "conversationId": cid}).encode())
    for _ in range(3):  # the platform retries the batch
        await app_functions()["ingest"](hub_batch([event]))
    await run_stages(broker, clock, settings)
    view = await _view(cid)
    assert view["turn"] == 1
    assert [t["turn"] for t in view.get("turns", [])] == [0]
    assert [c.stage for c in model.calls].count("intent") == 2


async def test_a_batch_row_following_up_no_conversation_is_a_rejected_line(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _model(intents=[INTENT_REFUND], replies=[REPLY])
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    rows = [FIRST, {**FIRST, "conversationId": "c-nothing"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    blob = func.blob.InputStream(
        data=data, name="batches/turns.jsonl", length=len(data), blob_properties={"ETag": "0x7"}
    )
    await app_functions()["ingest_batch"](blob)
    services = await bootstrap.get_services()
    [batch] = await services.store.query_eq(settings.batches_container, "blobName", blob.name)
    assert (batch["accepted"], batch["rejected"]) == (1, 1)
    assert batch["rejections"] == [
        {
            "line": 2,
            "code": "unknown_conversation",
            "reason": "conversationId names no conversation of this customer",
        }
    ]


async def test_a_conversation_takes_at_most_its_turns(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = _model(intents=[INTENT_REFUND], replies=[REPLY])
    unlimited = replace(settings, ingress_rate_per_minute=0.0)  # many turns of one customer
    bootstrap.configure(settings=unlimited, publisher=BrokerPublisher(broker), llm=model)
    _, first = await post(FIRST)
    cid = first["conversationId"]
    await run_stages(broker, clock, settings)
    for n in range(1, MAX_TURNS):
        status, _ = await post({**FIRST, "text": f"and {n}?", "conversationId": cid})
        assert status == 202
        await run_stages(broker, clock, settings)
    status, refused = await post({**FIRST, "text": "one more?", "conversationId": cid})
    assert (status, refused["code"]) == (400, "conversation_full")
    view = await _view(cid)
    assert (view["turn"], len(view["turns"])) == (MAX_TURNS - 1, MAX_TURNS - 1)
