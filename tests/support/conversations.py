"""Conversations built the way the pipeline builds them, for tests that need one stored or
in hand: received, then ended by one stage record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.conversation import Conversation, NextStep, StageRecord
from shared.domain.messages import Channel, CustomerRequest, Priority, Stage
from shared.domain.routing import Finish, Outcome


def ended_by_one_stage(
    conversation_id: str,
    *,
    stage: Stage,
    outcome: Outcome,
    result: dict[str, Any],
    now: datetime,
    customer_id: str = "cust-1",
    text: str = "Where is my order?",
    channel: Channel = Channel.CHAT,
) -> Conversation:
    """A conversation received at ``now`` whose first ``stage`` record finished it."""
    request = CustomerRequest(customer_id=customer_id, text=text, channel=channel)
    received = Conversation.received(
        conversation_id,
        request,
        priority=Priority.INTERACTIVE,
        batch_id=None,
        traceparent="",
        trace_id="",
        now=now,
    )
    done = Finish(outcome)
    record = StageRecord(
        key=f"{stage.value}:0",
        stage=stage,
        revision=0,
        message_id=f"{conversation_id}:{stage.value}:0",
        result=result,
        next=NextStep.of(done),
        started_at=now,
        completed_at=now,
    )
    return received.with_stage(record, done, now=now)
