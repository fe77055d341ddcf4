"""Where a conversation's time went: waiting between stages vs model calls vs the rest."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from devhost.progress import cost_table, latency_rows
from devhost.time_table import per_stage, percentile, time_table
from shared.domain.conversation import Conversation, NextStep, StageRecord, StageUsage
from shared.domain.messages import Channel, CustomerRequest, Priority, Stage
from shared.domain.routing import Finish, Next, Outcome, Step
from shared.domain.timing import stage_timings
from shared.ports import ChatResult, Usage

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _record(stage: Stage, start: float, end: float, model: float, step: Step) -> StageRecord:
    return StageRecord(
        key=f"{stage.value}:0",
        stage=stage,
        revision=0,
        message_id=f"c-1:{stage.value}:0",
        usage=StageUsage(calls=1, model_seconds=model),
        next=NextStep.of(step),
        started_at=_at(start),
        completed_at=_at(end),
    )


def _answered() -> Conversation:
    """Received at 0; intent 1.5-2.0 (0.4 in the model); response 3.0-4.0 (0.9 in the model)."""
    conversation = Conversation.received(
        "c-1",
        CustomerRequest(customer_id="cust-1", text="Where is my order?", channel=Channel.CHAT),
        priority=Priority.INTERACTIVE,
        batch_id=None,
        traceparent="",
        trace_id="",
        now=T0,
    )
    to_response = Next(Stage.RESPONSE, 0)
    conversation = conversation.with_stage(
        _record(Stage.INTENT, 1.5, 2.0, 0.4, to_response), to_response, now=_at(2.0)
    )
    done = Finish(Outcome.ANSWERED)
    return conversation.with_stage(_record(Stage.RESPONSE, 3.0, 4.0, 0.9, done), done, now=_at(4.0))


def test_each_stage_waits_from_the_previous_stage_completing() -> None:
    timings = stage_timings(_answered())

    assert [t.stage for t in timings] == [Stage.INTENT, Stage.RESPONSE]
    intent, response = timings
    assert intent.waited_s == 1.5  # from the request being received
    assert response.waited_s == 1.0  # from intent completing at 2.0
    assert round(intent.model_s, 6) == 0.4
    assert round(intent.other_s, 6) == 0.1
    assert round(response.model_s, 6) == 0.9
    assert round(response.other_s, 6) == 0.1


def test_model_time_is_capped_by_the_stage_run() -> None:
    """A record claiming more model time than the stage ran cannot make 'other' negative."""
    step = Finish(Outcome.ANSWERED)
    conversation = _answered().model_copy(
        update={"stages": {"intent:0": _record(Stage.INTENT, 1.0, 1.5, 9.0, step)}}
    )
    (only,) = stage_timings(conversation)
    assert only.model_s == 0.5
    assert only.other_s == 0.0


def test_usage_adds_up_model_seconds_and_stores_them() -> None:
    usage = Usage()
    for latency in (0.25, 0.5):
        usage.add(ChatResult("x", 10, 5, "gpt", latency_s=latency))
    stored = StageUsage.model_validate(usage.as_dict())
    assert stored.model_seconds == 0.75
    assert stored.model_dump(by_alias=True)["modelSeconds"] == 0.75


def test_records_written_before_model_seconds_read_as_zero() -> None:
    old = {"promptTokens": 1, "completionTokens": 1, "costUsd": 0.0, "calls": 1}
    assert StageUsage.model_validate(old).model_seconds == 0.0


def test_the_demo_table_groups_by_stage_with_percentiles() -> None:
    conversations = [_answered(), _answered()]
    grouped = per_stage(conversations)
    assert sorted(grouped) == sorted([Stage.INTENT, Stage.RESPONSE])
    assert len(grouped[Stage.INTENT]) == 2
    table = time_table(conversations)
    assert table.row_count == 2
    assert [c.header for c in table.columns][2:4] == ["waiting", "model calls"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 0.95) == 19.0
    assert percentile(values, 0.5) == 10.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([2.0, 1.0], 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="q must be in"):
        percentile(values, 95)


def test_the_summary_p95_is_nearest_rank_like_the_stage_table() -> None:
    # Of 1..10 s, 9 s has only 90% at or below it: the P95 is 10 s.
    latencies = [float(v) for v in range(10, 0, -1)]
    assert latency_rows(latencies) == [
        ("end-to-end P50 (s)", "5.50"),
        ("end-to-end P95 (s)", "10.00"),
    ]
    assert latency_rows([]) == []


def test_the_cost_table_counts_each_stage_s_calls() -> None:
    table = cost_table([_answered(), _answered()])
    calls = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert calls["intent"] == calls["response"] == "2"
    assert calls["critic"] == calls["escalation"] == "0"
