"""The devhost scaler's decisions, on a clock the tests move by hand, and its quota cap."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devhost.scaler import (
    FunctionScaler,
    QuotaBinding,
    QuotaPlanner,
    ScaleLimits,
    StageSample,
    quota_cap,
    stage_samples,
)
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.domain.conversation import Conversation, NextStep, StageRecord, StageUsage
from shared.domain.messages import Channel, CustomerRequest, Priority, Stage
from shared.domain.routing import Next
from shared.errors import ConfigError
from shared.llm.ledger import IDLE_FLOOR

ROOT = Path(__file__).resolve().parents[2]
TARGET = 16


def scaler(
    *, max_instances: int = 4, step: int = 4, cooldown: float = 15.0, cap: int | None = None
) -> FunctionScaler:
    limits = ScaleLimits(
        max_instances=max_instances, max_step_up=step, polling_interval_s=1.0, cooldown_s=cooldown
    )
    return FunctionScaler("intent_agent", TARGET, limits, cap=cap)


def run(s: FunctionScaler, backlogs: list[int], *, start: float = 0.0) -> list[int]:
    """Decide once per second for each backlog; return the instance counts."""
    return [s.decide(b, start + i) for i, b in enumerate(backlogs)]


# --------------------------------------------------------------------------- limits


def test_limits_are_read_from_scale_json() -> None:
    limits = ScaleLimits.from_file(ROOT / "scale.json")
    whole = json.loads((ROOT / "scale.json").read_text())
    section = whole["devhost"]
    assert limits.event_hub_partitions == whole["eventHubPartitions"]
    assert limits.max_instances == section["maxInstancesPerFunction"]
    assert limits.max_step_up == section["maxStepUp"]
    assert limits.polling_interval_s == section["pollingIntervalSeconds"]
    assert limits.cooldown_s == section["cooldownSeconds"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"maxInstancesPerFunction": 0}, "maxInstancesPerFunction"),
        ({"maxStepUp": "many"}, "devhost"),
        ({"pollingIntervalSeconds": 0}, "pollingIntervalSeconds"),
        ({"cooldownSeconds": -1}, "cooldownSeconds"),
    ],
)
def test_a_bad_scale_limit_is_refused_with_the_key_named(
    tmp_path: Path, section: dict[str, object], key: str
) -> None:
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"devhost": section}))
    with pytest.raises(ConfigError) as caught:
        ScaleLimits.from_file(path)
    assert key in caught.value.setting
    assert str(path) in caught.value.setting


def test_a_hub_without_partitions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"devhost": {}, "eventHubPartitions": 0}))
    with pytest.raises(ConfigError, match="at least 1"):
        ScaleLimits.from_file(path)


def test_a_missing_scale_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scale limits"):
        ScaleLimits.from_file(tmp_path / "absent.json")


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("backlog", "instances"),
    # TARGET = 16 messages per instance, at most 5 instances.
    [(0, 0), (1, 1), (15, 1), (16, 1), (17, 2), (33, 3), (63, 4), (64, 4), (65, 5), (1000, 5)],
)
def test_desired_instances_are_the_backlog_over_the_target_rounded_up_and_clamped(
    backlog: int, instances: int
) -> None:
    s = scaler(max_instances=5)
    assert s.desired(backlog) == instances


def test_a_negative_backlog_wants_no_instances() -> None:
    assert scaler().desired(-3) == 0


def test_scale_out_adds_at_most_four_instances_per_step_from_zero_to_ten() -> None:
    s = scaler(max_instances=10)
    assert run(s, [10_000] * 4) == [4, 8, 10, 10]
    assert s.bound == "max"


def test_scale_out_stops_at_what_the_backlog_needs() -> None:
    s = scaler(max_instances=10)
    assert run(s, [5 * TARGET] * 3) == [4, 5, 5]
    assert s.bound == "backlog"


def test_the_step_is_reported_as_the_bound_while_scaling_out() -> None:
    s = scaler(max_instances=10)
    s.decide(10_000, 0.0)
    assert s.bound == "step"


def test_an_idle_function_returns_to_zero_only_after_the_cooldown() -> None:
    s = scaler(cooldown=15.0)
    busy = run(s, [100] * 5)  # t = 0..4, last busy sample at t = 4
    idle = run(s, [0] * 20, start=5.0)  # t = 5..24
    assert busy[-1] == 4
    at_zero = 5 + idle.index(0)
    assert at_zero == 4 + 15
    assert all(n == 4 for n in idle[: at_zero - 5])
    assert s.bound == "backlog"


def test_a_short_dip_in_the_backlog_stops_no_worker() -> None:
    s = scaler(cooldown=10.0)
    counts = run(s, [100, 100, 0, 0, 3, 0, 0, 100, 100])
    assert counts == [4] * 9


def test_scale_in_goes_to_the_most_wanted_during_the_cooldown() -> None:
    s = scaler(cooldown=5.0)
    run(s, [100] * 3)  # t = 0..2 want 4
    counts = run(s, [40] * 8, start=3.0)  # want 3 from t = 3
    assert counts[:4] == [4, 4, 4, 4]  # t = 3..6: a want of 4 is still within 5 s
    assert counts[4:] == [3, 3, 3, 3]  # t = 7: the last want of 4 (t = 2) is 5 s old
    assert s.bound == "backlog"


def test_the_cooldown_is_reported_as_the_bound_while_waiting_to_scale_in() -> None:
    s = scaler(cooldown=5.0)
    run(s, [100, 0])
    assert s.instances == 4
    assert s.bound == "cooldown"


def test_a_zero_cooldown_scales_in_at_once() -> None:
    s = scaler(cooldown=0.0)
    assert run(s, [100, 20, 0]) == [4, 2, 0]


def test_an_instance_that_died_is_replaced_when_the_backlog_still_needs_it() -> None:
    s = scaler()
    run(s, [100])
    s.instances = 3  # the host saw one worker exit
    assert s.decide(100, 1.0) == 4


def test_the_event_hub_function_is_capped_at_its_partition_count() -> None:
    s = scaler(max_instances=10, cap=4)
    assert run(s, [10_000] * 3) == [4, 4, 4]
    assert s.bound == "partitions"


def test_a_quota_cap_keeps_instances_the_quota_cannot_feed_from_starting() -> None:
    s = scaler(max_instances=4)
    s.quota_cap = 2
    assert run(s, [1000] * 3) == [2, 2, 2]
    assert s.bound == "quota"


def test_a_lower_quota_cap_retires_instances_after_the_cooldown() -> None:
    s = scaler(cooldown=3.0)
    run(s, [1000] * 2)
    s.quota_cap = 1
    counts = run(s, [1000] * 4, start=2.0)
    assert counts == [4, 4, 1, 1]


def test_functions_scale_independently_of_each_other() -> None:
    busy, idle = scaler(), scaler()
    idle.name = "critic_agent"
    for t in range(5):
        busy.decide(500, float(t))
        idle.decide(0, float(t))
    assert (busy.instances, idle.instances) == (4, 0)


# --------------------------------------------------------------------------- quota cap


def test_the_quota_cap_is_the_calls_in_flight_the_quota_sustains_over_calls_per_instance() -> None:
    tpm, tokens, latency = 600_000, 500, 3.0
    calls_per_second = tpm / 60 / tokens  # 20
    in_flight = calls_per_second * latency  # 60
    cap = quota_cap(
        tokens_per_minute=tpm, tokens_per_call=tokens, call_latency_s=latency, per_instance=TARGET
    )
    assert cap == math.ceil(in_flight / TARGET) == 4


@pytest.mark.parametrize("tpm", [0, 1_000, -5])
def test_the_quota_cap_is_never_below_one(tpm: int) -> None:
    cap = quota_cap(
        tokens_per_minute=tpm, tokens_per_call=500, call_latency_s=0.3, per_instance=TARGET
    )
    assert cap == 1


def binding(function: str, stage: str, deployment: str, tpm: int) -> QuotaBinding:
    return QuotaBinding(
        function=function,
        stage=stage,
        deployment=deployment,
        tokens_per_minute=tpm,
        max_tokens=200,
        per_instance=TARGET,
        max_instances=4,
    )


def sample(n: int, stage: str, *, at: float, seconds: float, prompt: int = 300) -> StageSample:
    return StageSample(
        key=f"c{n}/{stage}:0",
        stage=stage,
        completed_at=at,
        seconds=seconds,
        prompt_tokens=prompt,
        calls=1,
        cached_calls=0,
    )


def test_the_planner_assumes_its_prior_until_enough_calls_are_measured() -> None:
    planner = QuotaPlanner([binding("intent_agent", "intent", "mini", 1)], prior_latency_s=0.7)
    planner.observe(sample(n, "intent", at=100.0, seconds=5.0) for n in range(3))
    profile = planner.profile("intent_agent", 100.0)
    assert (profile.seconds, profile.tokens, profile.measured) == (0.7, 500 + 200, False)


def test_the_planner_measures_mean_tokens_and_the_lower_quartile_of_durations() -> None:
    planner = QuotaPlanner([binding("intent_agent", "intent", "mini", 1)], prior_latency_s=9.0)
    durations = [0.3, 0.3, 0.4, 0.5, 2.0, 4.0, 8.0, 9.0, 9.5]
    planner.observe(
        sample(n, "intent", at=100.0, seconds=d, prompt=100 + n) for n, d in enumerate(durations)
    )
    profile = planner.profile("intent_agent", 100.0)
    assert profile.samples == 9
    assert profile.seconds == 0.4  # the 3rd of the 9 sorted durations
    assert profile.tokens == pytest.approx(304.0)  # prompts 100..108 average 104, + 200 max


def test_the_planner_counts_a_record_once_and_ignores_cache_hits() -> None:
    planner = QuotaPlanner(
        [binding("intent_agent", "intent", "mini", 1)], prior_latency_s=1.0, min_samples=2
    )
    first = sample(1, "intent", at=100.0, seconds=0.5)
    cached = StageSample("c2/intent:0", "intent", 100.0, 0.001, 300, calls=1, cached_calls=1)
    planner.observe([first, first, cached, sample(3, "intent", at=100.0, seconds=0.5)])
    assert planner.profile("intent_agent", 100.0).samples == 2


def test_the_planner_forgets_records_older_than_its_window() -> None:
    planner = QuotaPlanner(
        [binding("intent_agent", "intent", "mini", 1)],
        prior_latency_s=1.0,
        window_s=60.0,
        min_samples=1,
    )
    planner.observe([sample(1, "intent", at=100.0, seconds=0.5)])
    assert planner.profile("intent_agent", 150.0).measured
    assert not planner.profile("intent_agent", 161.0).measured


# With the prior (1 s per invocation, 500 prompt + 200 max tokens = 700 tokens), an instance's
# 16 slots need 16 x 700 x 60 = 672,000 TPM.
SLOT_TPM = 700 * 60


def mini(*functions: str, tpm: int, latency: float = 1.0) -> QuotaPlanner:
    return QuotaPlanner(
        [binding(f, f.removesuffix("_agent"), "mini", tpm) for f in functions],
        prior_latency_s=latency,
    )


def test_a_busy_function_gets_what_an_idle_one_on_its_deployment_does_not_use() -> None:
    planner = mini("intent_agent", "critic_agent", tpm=2_000_000)
    caps = planner.caps({"intent_agent": 900, "critic_agent": 0}, 0.0)
    # The idle critic keeps a floor of a tenth of an equal share (100,000 TPM); the intent
    # agent gets the other 1,900,000 TPM: 45 calls/s x 1 s = 45 slots = 3 instances.
    assert caps == {"intent_agent": 3, "critic_agent": 1}


def test_two_busy_functions_on_one_deployment_split_its_quota_evenly() -> None:
    planner = mini("intent_agent", "critic_agent", tpm=2_000_000)
    caps = planner.caps({"intent_agent": 900, "critic_agent": 900}, 0.0)
    assert caps == {"intent_agent": 2, "critic_agent": 2}  # 1,000,000 TPM = 24 slots each


def test_a_function_that_needs_little_leaves_the_rest_of_the_quota_to_the_others() -> None:
    planner = mini("intent_agent", "critic_agent", tpm=3_000_000)
    caps = planner.caps({"intent_agent": 16, "critic_agent": 900}, 0.0)
    # intent needs 16 slots (672,000 TPM); critic gets 2,328,000 TPM = 55 slots = 4 instances.
    assert caps == {"intent_agent": 1, "critic_agent": 4}


def test_functions_on_different_deployments_do_not_share_a_quota() -> None:
    tpm = 2_000_000
    planner = QuotaPlanner(
        [
            binding("intent_agent", "intent", "mini", tpm),
            binding("response_agent", "response", "big", tpm),
        ],
        prior_latency_s=1.0,
    )
    caps = planner.caps({"intent_agent": 900, "response_agent": 900}, 0.0)
    assert caps == {"intent_agent": 3, "response_agent": 3}  # ~1,900,000 TPM each, as if alone


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    backlogs=st.lists(st.integers(min_value=0, max_value=5_000), min_size=3, max_size=3),
    latency=st.floats(min_value=0.05, max_value=10.0),
    headroom=st.floats(min_value=1.0, max_value=50.0),
)
def test_a_quota_that_covers_the_demand_never_caps_below_what_the_backlog_asks(
    backlogs: list[int], latency: float, headroom: float
) -> None:
    functions = ("intent_agent", "critic_agent", "escalation_agent")
    demand_tpm = sum(min(b, 4 * TARGET) / latency * SLOT_TPM for b in backlogs)
    # Covering the demand includes the floor every other function keeps (allocate_shares: a
    # tenth of an equal share each), which one busy function cannot use.
    floors = IDLE_FLOOR * (len(functions) - 1) / len(functions)
    tpm = math.ceil(demand_tpm * headroom / (1 - floors)) + 1
    planner = mini(*functions, tpm=tpm, latency=latency)
    caps = planner.caps(dict(zip(functions, backlogs, strict=True)), 0.0)
    for function, backlog in zip(functions, backlogs, strict=True):
        assert caps[function] >= min(4, math.ceil(backlog / TARGET)), (function, caps)


def test_the_planner_refuses_a_non_positive_prior_latency() -> None:
    with pytest.raises(ConfigError, match="DEVHOST_CALL_LATENCY_S"):
        QuotaPlanner([], prior_latency_s=0.0)


# --------------------------------------------------------------------------- measurement


async def test_stage_records_are_read_back_through_the_store_port_as_samples(
    tmp_path: Path,
) -> None:
    store = SqliteDocumentStore(
        str(tmp_path / "store.sqlite3"), partition_keys={"conversations": "/conversationId"}
    )
    now = datetime.now(UTC)
    request = CustomerRequest(customer_id="cust-1", text="Where is ORD-1?", channel=Channel.CHAT)
    try:
        for n in range(3):
            started = now - timedelta(seconds=2 + n)
            received = Conversation.received(
                f"c{n}",
                request,
                priority=Priority.INTERACTIVE,
                batch_id=None,
                traceparent="",
                trace_id="",
                now=started,
            )
            step = Next(Stage.RESPONSE, 0)
            record = StageRecord(
                key="intent:0",
                stage=Stage.INTENT,
                revision=0,
                message_id=f"c{n}:intent:0",
                usage=StageUsage(prompt_tokens=120 + n, calls=1),
                next=NextStep.of(step),
                started_at=started,
                completed_at=started + timedelta(seconds=0.25 * (n + 1)),
            )
            await store.create("conversations", received.with_stage(record, step, now=now).to_doc())
        await store.create("conversations", {"id": "odd", "conversationId": "odd"})  # skipped
        samples = await stage_samples(store, "conversations", since=now.timestamp() - 60)
        assert await stage_samples(store, "conversations", since=now.timestamp() + 5) == []
    finally:
        await store.close()
    by_key = {s.key: s for s in samples}
    assert sorted(by_key) == ["c0/intent:0", "c1/intent:0", "c2/intent:0"]
    assert by_key["c1/intent:0"].seconds == pytest.approx(0.5)
    assert by_key["c2/intent:0"].prompt_tokens == 122
