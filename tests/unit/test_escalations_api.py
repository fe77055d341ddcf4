"""The escalations API through its HTTP functions: an escalation becomes a work item in the
team's queue; claim, release and resolve are conditional writes (409 on a race); a resolve's
reply is delivered through the outbox once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import azure.functions as func

from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.outcomes import EVERYTHING
from shared import bootstrap
from shared.config import Settings
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, hub_event
from tests.support.fakes import ESCALATION, INTENT_ANGRY, ScriptedModel
from tests.support.outcome_fixtures import *  # noqa: F403  (clock, broker, closing)
from tests.support.stage_runner import (
    FaultyPublisher,
    on_subscription,
    run_stages,
)

REQUEST = {"customerId": "cust-1", "text": "I want a person, now", "channel": "sms"}


async def _escalate(broker: Broker, clock: FakeClock, settings: Settings, *answers: Any) -> None:
    """Run requests whose escalations are ``answers`` (one per request) to their outcome."""
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": list(answers)})
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    for n in range(len(answers)):
        body = json.dumps({**REQUEST, "text": f"{REQUEST['text']} ({n})"}).encode()
        await app_functions()["ingest"]([hub_event(body, sequence=n + 1)])
        await run_stages(broker, clock, settings)  # one at a time: their ages differ


async def call(
    function: str,
    *,
    method: str = "GET",
    params: dict[str, str] | None = None,
    route: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    req = func.HttpRequest(
        method=method,
        url="http://localhost/api/x",
        headers=headers or {},
        params=params or {},
        route_params=route or {},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    response = await app_functions()[function](req)
    return response.status_code, json.loads(response.get_body() or b"null")


async def _only_item() -> dict[str, Any]:
    status, page = await call("list_escalations")
    assert status == 200
    [item] = page["items"]
    return item


async def test_the_queue_is_paged_and_ordered_by_priority_then_age(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    answers = [
        {**ESCALATION, "priority": "low"},
        {**ESCALATION, "priority": "urgent", "team": "legal"},
        {**ESCALATION, "priority": "low"},
        {**ESCALATION, "priority": "high"},
    ]
    await _escalate(broker, clock, settings, *answers)
    status, page = await call("list_escalations", params={"pageSize": "3"})
    assert status == 200
    assert [i["priority"] for i in page["items"]] == ["urgent", "high", "low"]
    assert page["total"] == 4
    assert page["next"] == "/api/escalations?pageSize=3&page=2"
    status, rest = await call("list_escalations", params={"pageSize": "3", "page": "2"})
    assert [i["priority"] for i in rest["items"]] == ["low"]
    assert rest["items"][0]["createdAt"] > page["items"][2]["createdAt"]  # the younger low
    assert "next" not in rest
    _, legal = await call("list_escalations", params={"team": "legal"})
    assert [i["team"] for i in legal["items"]] == ["legal"]
    _, resolved = await call("list_escalations", params={"status": "resolved"})
    assert resolved["items"] == []
    assert (await call("list_escalations", params={"status": "lost"}))[0] == 400
    assert (await call("list_escalations", params={"pageSize": "0"}))[0] == 400


async def test_claim_resolve_delivers_one_human_reply(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    await _escalate(broker, clock, settings, ESCALATION)
    item = await _only_item()
    assert item["history"][0]["text"].startswith("I want a person")
    wid = {"id": item["id"]}
    status, claimed = await call(
        "claim_escalation", method="POST", route=wid, body={"agent": "alice"}
    )
    assert (status, claimed["status"], claimed["claimedBy"]) == (200, "claimed", "alice")
    status, refused = await call(
        "claim_escalation", method="POST", route=wid, body={"agent": "bob"}
    )
    assert (status, refused["code"]) == (409, "conflict")
    reply = {"agent": "alice", "reply": "I've refunded order A-1001 myself. Sorry!"}
    status, resolved = await call("resolve_escalation", method="POST", route=wid, body=reply)
    assert (status, resolved["status"], resolved["resolvedBy"]) == (200, "resolved", "alice")
    # Resolving again with the same reply (a retried request) is not a second reply.
    assert (await call("resolve_escalation", method="POST", route=wid, body=reply))[0] == 200
    delivered = on_subscription(broker, "delivery-sms")
    assert [m["kind"] for m in delivered] == ["handover", "reply"]
    assert delivered[1]["text"] == reply["reply"]
    assert delivered[1]["author"] == "human:alice"
    assert delivered[1]["outcome"] == "resolved_by_human"
    assert len(on_subscription(broker, EVERYTHING)) == 2
    view = await (await bootstrap.get_services()).pipeline.conversation(item["conversationId"])
    assert view is not None
    assert view["status"] == "resolved_by_human"
    assert [(a["who"], a["action"]) for a in view["audit"]] == [
        ("agents", "escalated"),
        ("alice", "claimed"),
        ("alice", "resolved"),
    ]
    _, queue = await call("list_escalations")
    assert queue["items"] == []
    _, done = await call("list_escalations", params={"status": "resolved"})
    assert [i["id"] for i in done["items"]] == [item["id"]]


async def test_two_agents_claiming_at_once_one_wins_and_one_gets_409(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    await _escalate(broker, clock, settings, ESCALATION)
    wid = {"id": (await _only_item())["id"]}
    results = await asyncio.gather(
        *(
            call("claim_escalation", method="POST", route=wid, body={"agent": agent})
            for agent in ("alice", "bob", "carol", "dave")
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409, 409, 409]
    winner = next(body["claimedBy"] for status, body in results if status == 200)
    assert (await _only_item())["claimedBy"] == winner


async def test_release_and_the_signed_in_principal(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    await _escalate(broker, clock, settings, ESCALATION)
    wid = {"id": (await _only_item())["id"]}
    signed_in = {"X-MS-CLIENT-PRINCIPAL-NAME": "erin@contoso.example"}
    status, claimed = await call(
        "claim_escalation", method="POST", route=wid, body={"agent": "spoofed"}, headers=signed_in
    )
    assert (status, claimed["claimedBy"]) == (200, "erin@contoso.example")
    assert (await call("release_escalation", method="POST", route=wid, body={"agent": "x"}))[
        0
    ] == 409
    status, released = await call(
        "release_escalation", method="POST", route=wid, body={}, headers=signed_in
    )
    assert (status, released["status"]) == (200, "open")
    assert "claimedBy" not in released
    assert (await call("release_escalation", method="POST", route=wid, body={}))[0] == 400
    missing = await call(
        "claim_escalation", method="POST", route={"id": "w-nope-t0"}, body={"agent": "a"}
    )
    assert missing[0] == 404
    bad = await call("resolve_escalation", method="POST", route=wid, body={"agent": "a"})
    assert bad[0] == 400


async def test_a_resolve_whose_reply_cannot_leave_yet_is_503_and_a_retry_sends_it_once(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    await _escalate(broker, clock, settings, ESCALATION)
    wid = {"id": (await _only_item())["id"]}
    assert (await call("claim_escalation", method="POST", route=wid, body={"agent": "al"}))[
        0
    ] == 200
    await bootstrap.shutdown()
    publisher = FaultyPublisher(BrokerPublisher(broker), before=1)
    bootstrap.configure(settings=settings, publisher=publisher, llm=ScriptedModel())
    reply = {"agent": "al", "reply": "Sorted."}
    status, body = await call("resolve_escalation", method="POST", route=wid, body=reply)
    assert (status, body["code"]) == (503, "retry")
    assert [m["kind"] for m in on_subscription(broker, EVERYTHING)] == ["handover"]
    status, body = await call("resolve_escalation", method="POST", route=wid, body=reply)
    assert (status, body["status"]) == (200, "resolved")
    assert [m["kind"] for m in on_subscription(broker, EVERYTHING)] == ["handover", "reply"]
    assert publisher.topic_sends == 2
