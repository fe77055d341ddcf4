"""The work item's state machine, on the conversation aggregate: claim, release, resolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.conversation import Conversation
from shared.domain.messages import Channel, CustomerRequest, Priority, Stage
from shared.domain.routing import Outcome
from shared.domain.workitem import WorkItemConflict, WorkItemStatus, conversation_of
from tests.support.conversations import ended_by_one_stage

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
ESCALATION = {"team": "billing", "priority": "high", "reason": "wants a person", "summary": "s"}


def _escalated() -> Conversation:
    return ended_by_one_stage(
        "c-abc",
        stage=Stage.ESCALATION,
        outcome=Outcome.ESCALATED,
        result=ESCALATION,
        now=T0,
        customer_id="cust-7",
        text="I want a person",
        channel=Channel.SMS,
    )


def test_an_escalation_opens_a_work_item_with_the_history_and_an_audit_entry() -> None:
    conversation = _escalated()
    item = conversation.work_item
    assert item is not None
    assert item.id == "w-abc-t0"
    assert conversation_of(item.id) == "c-abc"
    assert (item.team, item.priority, item.status) == ("billing", "high", WorkItemStatus.OPEN)
    assert item.due_at == T0 + timedelta(hours=4)
    assert [(h.role, h.text) for h in item.history] == [("customer", "I want a person")]
    assert [(a.who, a.action) for a in conversation.audit] == [("agents", "escalated")]
    doc = conversation.to_doc()
    assert doc["workItem"]["status"] == "open"
    assert Conversation.from_doc(doc) == conversation


def test_one_agent_at_a_time_holds_a_work_item() -> None:
    claimed = _escalated().claim("alice", now=T0)
    assert claimed is not None
    assert claimed.work_item is not None
    assert claimed.work_item.claimed_by == "alice"
    assert claimed.claim("alice", now=T0) is None  # already hers: nothing to write
    with pytest.raises(WorkItemConflict, match="claimed by alice"):
        claimed.claim("bob", now=T0)
    with pytest.raises(WorkItemConflict, match="claimed by alice"):
        claimed.release("bob", now=T0)
    with pytest.raises(WorkItemConflict, match="claimed by alice"):
        claimed.resolve("bob", "hi", now=T0)


def test_release_reopens_it_for_the_team() -> None:
    claimed = _escalated().claim("alice", now=T0)
    assert claimed is not None
    released = claimed.release("alice", now=T0 + timedelta(minutes=1))
    assert released.work_item is not None
    assert released.work_item.status is WorkItemStatus.OPEN
    assert released.work_item.claimed_by is None
    with pytest.raises(WorkItemConflict, match="not claimed"):
        released.release("alice", now=T0)
    assert released.claim("bob", now=T0) is not None
    assert [a.action for a in released.audit] == ["escalated", "claimed", "released"]


def test_resolve_ends_the_conversation_with_the_human_reply_in_the_outbox() -> None:
    claimed = _escalated().claim("alice", now=T0)
    assert claimed is not None
    with pytest.raises(WorkItemConflict, match="claim it"):
        _escalated().resolve("alice", "hello", now=T0)
    later = T0 + timedelta(minutes=5)
    resolved = claimed.resolve("alice", "Your refund is on its way.", now=later)
    assert resolved is not None
    assert resolved.status == "resolved_by_human"
    assert resolved.is_final
    assert resolved.outcome is not None
    assert resolved.outcome.reply == "Your refund is on its way."
    handover, reply = resolved.outbox
    assert handover.message.kind == "handover"
    assert reply.message_id == "c-abc:t0:resolved_by_human"
    assert reply.message.kind == "reply"
    assert reply.message.author == "human:alice"
    assert reply.message.properties()["channel"] == "sms"
    audit = resolved.audit[-1]
    assert (audit.who, audit.action, audit.at) == ("alice", "resolved", later)


def test_resolving_twice_is_one_reply_and_a_different_second_reply_is_refused() -> None:
    claimed = _escalated().claim("alice", now=T0)
    assert claimed is not None
    resolved = claimed.resolve("alice", "Done.", now=T0)
    assert resolved is not None
    assert resolved.resolve("alice", "Done.", now=T0) is None
    with pytest.raises(WorkItemConflict, match="already resolved"):
        resolved.resolve("alice", "Something else.", now=T0)
    with pytest.raises(WorkItemConflict, match="already resolved"):
        resolved.claim("bob", now=T0)


def test_a_conversation_without_an_escalation_has_no_work_item_to_claim() -> None:
    request = CustomerRequest(customer_id="c", text="t", channel=Channel.CHAT)
    received = Conversation.received(
        "c-x",
        request,
        priority=Priority.INTERACTIVE,
        batch_id=None,
        traceparent="",
        trace_id="",
        now=T0,
    )
    with pytest.raises(WorkItemConflict, match="no work item"):
        received.claim("alice", now=T0)
    assert conversation_of("c-x") is None
    assert conversation_of("w-abc-tx") is None
