"""Always-ready instances in devhost's scaler: scale.json ``alwaysReady`` (Flex Consumption's
shape: a group or ``function:<name>`` with an instance count) sets the fewest instances a
function runs, and a malformed list stops start-up naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devhost.scaler import FunctionScaler, ScaleLimits
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LIMITS = ScaleLimits(max_instances=4, max_step_up=4, polling_interval_s=1.0, cooldown_s=10.0)


def scaler(always_ready: int, **kwargs: Any) -> FunctionScaler:
    return FunctionScaler("critic_agent", 16, LIMITS, always_ready=always_ready, **kwargs)


def test_an_always_ready_function_runs_its_instances_with_no_backlog() -> None:
    assert scaler(0).decide(0, now=0.0) == 0
    ready = scaler(2)
    assert ready.decide(0, now=0.0) == 2
    assert ready.bound == "alwaysReady"


def test_an_always_ready_function_scales_out_above_and_back_to_its_count_not_zero() -> None:
    ready = scaler(1)
    assert ready.decide(64, now=0.0) == 4  # the backlog asks for more than the floor
    assert ready.decide(0, now=5.0) == 4  # within the cooldown: kept
    assert ready.decide(0, now=20.0) == 1  # after it: down to the always-ready count
    assert ready.decide(0, now=60.0) == 1


def test_the_always_ready_count_stays_within_the_fixed_ceilings_but_not_the_quota_cap() -> None:
    assert scaler(9).decide(0, now=0.0) == LIMITS.max_instances
    hub = scaler(3, cap=2)
    assert hub.decide(0, now=0.0) == 2
    quota_bound = scaler(2)
    quota_bound.quota_cap = 1
    assert quota_bound.decide(0, now=0.0) == 2


def test_scale_json_always_ready_reaches_the_scaler_limits(tmp_path: Path) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    scale["alwaysReady"] = [
        {"name": "function:intent_agent", "instanceCount": 1},
        {"name": "http", "instanceCount": 2},
    ]
    path = tmp_path / "scale.json"
    path.write_text(json.dumps(scale))
    limits = ScaleLimits.from_file(path)
    assert limits.always_ready_for("intent_agent") == 1
    assert limits.always_ready_for("critic_agent") == 0
    assert limits.always_ready_for("http") == 0  # a group is not a function's own count


@pytest.mark.parametrize(
    "entries",
    [
        {"function:intent_agent": 1},
        [{"name": "intent_agent", "instanceCount": 1}],
        [{"name": "function:", "instanceCount": 1}],
        [{"name": "function:intent_agent", "instanceCount": "1"}],
        [{"name": "function:intent_agent", "instanceCount": -1}],
        [{"name": "http", "instanceCount": 1}, {"name": "http", "instanceCount": 2}],
    ],
)
def test_a_malformed_always_ready_stops_start_up_naming_it(tmp_path: Path, entries: Any) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    scale["alwaysReady"] = entries
    path = tmp_path / "scale.json"
    path.write_text(json.dumps(scale))
    with pytest.raises(ConfigError, match="alwaysReady"):
        ScaleLimits.from_file(path)
