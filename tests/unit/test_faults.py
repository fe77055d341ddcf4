"""``--faults``: one flag for the simulator's fault knobs, read back by the simulator's own
command line (``python -m devhost.simulator``) as the oracle of what it will inject."""

from __future__ import annotations

import pytest

from devhost import cli
from devhost.faults import FaultSpecError, parse_faults
from devhost.simulator.__main__ import build_parser, config_from_args
from devhost.simulator.config import Faults


def _simulator_faults(spec: str) -> Faults:
    args = build_parser().parse_args(parse_faults(spec).simulator_args())
    return config_from_args(args).faults


def test_every_kind_reaches_the_simulator_as_its_own_setting() -> None:
    faults = _simulator_faults(
        "500=0.1, 503=0.05,429=0.1,timeout=0.05,malformed=0.04,schema=0.03,"
        "content-filter=0.02,seed=7,timeout_s=2.5"
    )
    assert faults.error_rates == {500: 0.1, 503: 0.05, 429: 0.1}
    assert faults.timeout_rate == 0.05
    assert faults.malformed_json_rate == 0.04
    assert faults.schema_violation_rate == 0.03
    assert faults.content_filter_rate == 0.02
    assert faults.timeout_s == 2.5


def test_the_seed_makes_the_draws_repeatable() -> None:
    args = build_parser().parse_args(parse_faults("500=0.5,seed=42").simulator_args())
    assert config_from_args(args).seed == 42


def test_the_plan_reads_back_in_words() -> None:
    assert parse_faults("500=0.1,timeout=0.05").describe() == "HTTP 500 10%, timeout 5%"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "empty"),
        ("500", "not KIND=VALUE"),
        ("500=", "not KIND=VALUE"),
        ("500=lots", "'lots' is not a number"),
        ("500=1.5", "a probability in [0, 1]"),
        ("500=nan", "a probability in [0, 1]"),
        ("302=0.1", "must be 400-599"),
        ("teapot=0.1", "unknown fault 'teapot'"),
        ("500=0.1,500=0.2", "500 is given twice"),
        ("500=0.6,timeout=0.6", "add up to 1.2"),
        ("seed=x", "'x' is not an integer"),
        ("timeout_s=0", "more than 0 seconds"),
        ("timeout_s=inf", "more than 0 seconds"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_part(spec: str, says: str) -> None:
    with pytest.raises(FaultSpecError) as refused:
        parse_faults(spec)
    assert says in str(refused.value)


def test_the_cli_refuses_a_bad_spec_before_starting_anything(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--workdir", str(tmp_path), "run", "--faults", "500=2"])
    assert done.value.code == 2
    assert "--faults: '500=2': a rate is a probability in [0, 1]" in capsys.readouterr().err
