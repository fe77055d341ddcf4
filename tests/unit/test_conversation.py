"""The conversation aggregate: its JSON is pinned, and every change returns a new aggregate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.domain.conversation import (
    BodySummary,
    Conversation,
    NextStep,
    RejectionSource,
    StageRecord,
    StageUsage,
)
from shared.domain.messages import Channel, CustomerRequest, Priority, Stage
from shared.domain.outbox import OUTCOME_PROPERTY_NAMES
from shared.domain.routing import Finish, Next, Outcome

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
REQUEST = CustomerRequest(
    customer_id="cust-7",
    text="Where is ORD-1?",
    channel=Channel.EMAIL,
    metadata={"device": {"os": "iOS"}},
)


def _received() -> Conversation:
    return Conversation.received(
        "c-1",
        REQUEST,
        priority=Priority.INTERACTIVE,
        batch_id=None,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        trace_id="a" * 32,
        now=T0,
    )


def _record(stage: Stage, revision: int, result: dict[str, object], step: object) -> StageRecord:
    return StageRecord(
        key=f"{stage.value}:{revision}",
        stage=stage,
        revision=revision,
        message_id=f"c-1:{stage.value}:{revision}",
        result=result,
        usage=StageUsage(prompt_tokens=100, completion_tokens=40, cost_usd=0.001, calls=1),
        next=NextStep.of(step),  # type: ignore[arg-type]
        started_at=T0,
        completed_at=T0 + timedelta(seconds=1),
    )


def test_a_received_conversation_has_this_json() -> None:
    assert _received().to_doc() == {
        "v": 1,
        "id": "c-1",
        "conversationId": "c-1",
        "customerId": "cust-7",
        "status": "received",
        "channel": "email",
        "priority": "interactive",
        "request": {"text": "Where is ORD-1?", "metadata": {"device": {"os": "iOS"}}},
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "traceId": "a" * 32,
        "createdAt": "2026-12-01T09:30:00+00:00",
        "updatedAt": "2026-12-01T09:30:00+00:00",
        "stages": {},
        "tokens": {"total": {"promptTokens": 0, "completionTokens": 0, "costUsd": 0.0, "calls": 0}},
        "outcome": None,
    }


def test_an_answered_conversation_has_this_json() -> None:
    step = Next(Stage.RESPONSE, 0)
    first = _received().with_stage(
        _record(Stage.INTENT, 0, {"label": "order_status"}, step), step, now=T0
    )
    done = Finish(Outcome.ANSWERED)
    later = T0 + timedelta(seconds=2)
    answered = first.with_stage(
        _record(Stage.RESPONSE, 0, {"reply": "It ships today."}, done), done, now=later
    )
    doc = answered.to_doc()
    assert doc["status"] == "answered"
    assert doc["outcome"] == {
        "status": "answered",
        "at": "2026-12-01T09:30:02+00:00",
        "reply": "It ships today.",
        "revisions": 0,
    }
    assert doc["stages"]["response:0"] == {
        "key": "response:0",
        "stage": "response",
        "revision": 0,
        "messageId": "c-1:response:0",
        "traceId": "",
        "result": {"reply": "It ships today."},
        "usage": {
            "promptTokens": 100,
            "completionTokens": 40,
            "costUsd": 0.001,
            "calls": 1,
            "cachedCalls": 0,
            "modelSeconds": 0.0,
            "deployments": [],
        },
        "next": {"outcome": "answered", "reason": ""},
        "startedAt": "2026-12-01T09:30:00+00:00",
        "completedAt": "2026-12-01T09:30:01+00:00",
        "seq": 1,
    }
    assert doc["tokens"]["total"] == {
        "promptTokens": 200,
        "completionTokens": 80,
        "costUsd": 0.002,
        "calls": 2,
    }
    assert [r["key"] for r in answered.view()["stages"]] == ["intent:0", "response:0"]
    assert Conversation.from_doc({**doc, "_etag": "x", "_ts": 1}) == answered
    assert first.status == "in_progress"  # the earlier aggregate is unchanged
    assert "response:0" not in first.stages


def test_a_rejection_has_this_json() -> None:
    rejected = Conversation.rejected(
        "r-1",
        code="invalid_json",
        reason="the body is not valid JSON",
        customer_id=None,
        source=RejectionSource(kind="batch", batch_id="b-1", blob="batches/a.jsonl", line=3),
        body=BodySummary(sha256="0" * 64, bytes=9, excerpt="{broken"),
        batch_id="b-1",
        now=T0,
    )
    doc = rejected.to_doc()
    assert doc["reasonCode"] == "invalid_json"
    assert doc["source"] == {
        "kind": "batch",
        "batchId": "b-1",
        "blob": "batches/a.jsonl",
        "line": 3,
    }
    assert doc["outcome"] == {
        "status": "rejected",
        "reason": "the body is not valid JSON",
        "code": "invalid_json",
    }
    assert doc["customerId"] == "unknown"
    assert rejected.is_final


def test_failing_keeps_the_reason_and_an_unknown_field_is_refused() -> None:
    failed = _received().failed(reason="AgentCrashed", description="the agent raised", now=T0)
    assert failed.to_doc()["outcome"]["reason"] == "AgentCrashed"
    assert failed.is_final
    with pytest.raises(ValidationError):
        Conversation.from_doc({**_received().to_doc(), "surprise": 1})


def test_a_final_outcome_puts_one_message_in_the_outbox_with_this_json() -> None:
    done = Finish(Outcome.ANSWERED)
    answered = _received().with_stage(
        _record(Stage.RESPONSE, 0, {"reply": "It ships today."}, done), done, now=T0
    )
    assert answered.to_doc()["outbox"] == [
        {
            "messageId": "c-1:t0:answered",
            "message": {
                "v": 1,
                "messageId": "c-1:t0:answered",
                "kind": "reply",
                "outcome": "answered",
                "conversationId": "c-1",
                "customerId": "cust-7",
                "channel": "email",
                "turn": 0,
                "text": "It ships today.",
                "author": "agents",
                "at": "2026-12-01T09:30:00+00:00",
            },
            "createdAt": "2026-12-01T09:30:00+00:00",
        }
    ]
    assert [e.message_id for e in answered.pending_outbox()] == ["c-1:t0:answered"]
    sent = answered.outbox_sent({"c-1:t0:answered"}, now=T0 + timedelta(seconds=1))
    assert sent is not None
    assert sent.pending_outbox() == []
    assert sent.to_doc()["outbox"][0]["sentAt"] == "2026-12-01T09:30:01+00:00"
    assert sent.outbox_sent({"c-1:t0:answered"}, now=T0) is None  # nothing left to mark
    assert Conversation.from_doc(sent.to_doc()) == sent


def test_an_escalation_announces_its_work_item_and_a_failure_reaches_no_channel() -> None:
    done = Finish(Outcome.ESCALATED)
    result = {"team": "legal", "priority": "urgent", "reason": "threat", "summary": "s"}
    escalated = _received().with_stage(_record(Stage.ESCALATION, 0, result, done), done, now=T0)
    [entry] = escalated.outbox
    assert entry.message.kind == "handover"
    assert entry.message.work_item is not None
    assert entry.message.work_item.due_at == T0 + timedelta(hours=1)
    assert entry.message.properties()["team"] == "legal"
    # A handover on a channel sets every property a subscription may filter on.
    assert set(entry.message.properties()) == OUTCOME_PROPERTY_NAMES
    assert "legal team" in (entry.message.text or "")
    failed = _received().failed(reason="agent_crashed", description="boom", now=T0)
    [closed] = failed.outbox
    assert closed.message.kind == "closed"
    assert "channel" not in closed.message.properties()
    # Failing an already failed conversation again adds no second message.
    again = failed.failed(reason="agent_crashed", description="boom", now=T0)
    assert len(again.outbox) == 1
