"""Simulator configuration, the standalone CLI's flags, faults and token estimates."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from devhost.simulator.__main__ import build_parser, config_from_args
from devhost.simulator.config import (
    ConfigValueError,
    DeploymentLimits,
    Faults,
    LatencyModel,
    SimulatorConfig,
)
from devhost.simulator.faults import FaultDice, parse_fault_header
from devhost.simulator.tokens import estimate_prompt_tokens, tokenizer_name


def test_rpm_defaults_to_six_per_thousand_tpm() -> None:
    assert DeploymentLimits(tpm=210_000).effective_rpm == 1_260
    assert DeploymentLimits(tpm=10_000).effective_rpm == 60
    assert DeploymentLimits(tpm=100).effective_rpm == 1
    assert DeploymentLimits(tpm=10_000, rpm=5).effective_rpm == 5


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: DeploymentLimits(tpm=0), "tpm"),
        (lambda: DeploymentLimits(tpm=1000, rpm=-1), "rpm"),
        (lambda: LatencyModel(jitter=1.5), "jitter"),
        (lambda: LatencyModel(ttft_ms=-1), "ttft_ms"),
        (lambda: Faults(error_rates={200: 0.1}), "error_rates"),
        (lambda: Faults(timeout_rate=2), "timeout_rate"),
        (lambda: Faults(error_rates={500: 0.6}, timeout_rate=0.6), "faults"),
        (lambda: SimulatorConfig(api_key=""), "api_key"),
        (lambda: SimulatorConfig(deployments={"a/b": DeploymentLimits(tpm=1)}), "deployments"),
    ],
)
def test_bad_values_fail_with_the_settings_name(build: object, setting: str) -> None:
    with pytest.raises(ConfigValueError, match=setting):
        build()  # type: ignore[operator]


def test_config_round_trips_through_json() -> None:
    config = SimulatorConfig(
        api_key="k",
        accept_bearer=False,
        deployments={"gpt-4o": DeploymentLimits(tpm=30_000, rpm=100, model="gpt-4o-2024-08-06")},
        default_limits=DeploymentLimits(tpm=1_000),
        latency=LatencyModel(ttft_ms=10, per_token_ms=1, jitter=0, fixed_ms=None),
        faults=Faults(error_rates={500: 0.1, 503: 0.05}, timeout_rate=0.01, seed=9),
        seed=42,
    )
    text = json.dumps(config.to_dict())
    assert SimulatorConfig.from_dict(json.loads(text)) == config


def test_a_masked_config_hides_the_key() -> None:
    assert SimulatorConfig(api_key="secret").to_dict(reveal_key=False)["api_key"] == "***"


def test_merging_updates_sections_field_by_field() -> None:
    config = SimulatorConfig(
        deployments={"a": DeploymentLimits(tpm=1_000), "b": DeploymentLimits(tpm=2_000)},
        faults=Faults(timeout_rate=0.1),
    )
    merged = config.merged(
        {
            "faults": {"error_rates": {"503": 0.5}},
            "latency": {"fixed_ms": 5},
            "deployments": {"a": None, "c": {"tpm": 3_000}},
        }
    )
    assert merged.faults == Faults(timeout_rate=0.1, error_rates={503: 0.5})
    assert merged.latency.fixed_ms == 5
    assert merged.latency.ttft_ms == config.latency.ttft_ms
    assert set(merged.deployments) == {"b", "c"}
    assert config.deployments["a"].tpm == 1_000  # the original is untouched


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"colour": 1}, "unknown setting"),
        ({"faults": {"timeout_rate": "often"}}, "faults.timeout_rate"),
        ({"faults": {"error_rates": {"boom": 0.1}}}, "error_rates"),
        ({"deployments": {"x": {"rpm": 5}}}, "tpm is required"),
        ({"deployments": {"x": {"tpm": 5, "burst": 1}}}, "unknown setting"),
        ({"latency": "fast"}, "latency"),
    ],
)
def test_a_bad_patch_names_the_problem(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        SimulatorConfig().merged(patch)


def test_cli_flags_build_the_configuration() -> None:
    args = build_parser().parse_args(
        [
            "--deployment",
            "gpt-4o-mini=210000",
            "--deployment",
            "small",
            "--tpm",
            "10000",
            "--latency-ms",
            "200",
            "--error-rate",
            "500=0.05",
            "--timeout-rate",
            "0.01",
            "--seed",
            "3",
            "--no-bearer",
        ]
    )
    config = config_from_args(args)
    assert config.deployments["gpt-4o-mini"].tpm == 210_000
    assert config.deployments["small"].tpm == 10_000
    assert config.latency.fixed_ms == 200
    assert config.faults.error_rates == {500: 0.05}
    assert config.faults.timeout_rate == 0.01
    assert config.seed == 3
    assert config.accept_bearer is False
    assert config.limits_for("unlisted") == DeploymentLimits(tpm=10_000)


def test_cli_with_listed_deployments_and_no_tpm_refuses_other_names() -> None:
    config = config_from_args(build_parser().parse_args(["--deployment", "only=5000"]))
    assert config.limits_for("only") == DeploymentLimits(tpm=5_000)
    assert config.limits_for("other") is None


def test_cli_without_deployments_accepts_any_name() -> None:
    config = config_from_args(build_parser().parse_args(["--tpm", "5000"]))
    assert config.limits_for("anything") == DeploymentLimits(tpm=5_000)


def test_cli_takes_a_json_document_that_flags_override() -> None:
    document = SimulatorConfig(deployments={"d": DeploymentLimits(tpm=1_000)}, seed=1).to_dict()
    args = build_parser().parse_args(["--config-json", json.dumps(document), "--seed", "2"])
    config = config_from_args(args)
    assert config.deployments == {"d": DeploymentLimits(tpm=1_000)}
    assert config.seed == 2


def test_cli_rejects_a_bad_error_rate() -> None:
    with pytest.raises(ConfigValueError, match="--error-rate"):
        config_from_args(build_parser().parse_args(["--error-rate", "500=lots"]))


@pytest.mark.parametrize(
    ("header", "fault"),
    [("429", "429"), ("503", "503"), ("Timeout", "timeout"), ("none", None), ("schema", "schema")],
)
def test_fault_headers_are_parsed(header: str, fault: str | None) -> None:
    assert parse_fault_header(header) == fault


@pytest.mark.parametrize("header", ["explode", "200", "600", ""])
def test_unknown_fault_headers_are_refused(header: str) -> None:
    with pytest.raises(ValueError, match="x-sim-fault"):
        parse_fault_header(header)


def test_random_faults_follow_their_rates_and_seed() -> None:
    faults = Faults(error_rates={500: 0.2}, timeout_rate=0.1, content_filter_rate=0.1, seed=5)
    dice = FaultDice(faults, seed=0)
    draws = [dice.draw() for _ in range(5_000)]
    counts = Counter(draws)
    assert math.isclose(counts["500"] / 5_000, 0.2, abs_tol=0.03)
    assert math.isclose(counts["timeout"] / 5_000, 0.1, abs_tol=0.02)
    filtered = counts["content_filter"] + counts["content_filter_completion"]
    assert math.isclose(filtered / 5_000, 0.1, abs_tol=0.02)
    assert counts["content_filter"] > 0
    assert counts["content_filter_completion"] > 0
    again = FaultDice(faults, seed=99)  # the faults' own seed wins
    assert [again.draw() for _ in range(5_000)] == draws


def test_no_fault_rates_means_no_faults() -> None:
    dice = FaultDice(Faults(), seed=0)
    assert {dice.draw() for _ in range(100)} == {None}


def test_prompt_estimate_counts_text_and_per_message_overhead() -> None:
    messages = [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 41}], "name": "bob"},
    ]
    estimate = estimate_prompt_tokens(messages)
    if tokenizer_name() == "chars/4":
        assert estimate == 3 + (4 + 10) + (4 + 11 + 1 + 1)
    else:  # the real tokenizer is cached on this machine
        assert 20 <= estimate <= 60
    assert estimate_prompt_tokens([{"role": "user", "content": ""}]) == 7


def test_a_corrupt_cached_encoding_falls_back_to_the_estimate_without_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.llm import tokens as shared_tokens

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    cached = shared_tokens.tiktoken_cache_path(
        "o200k_base", env={"TIKTOKEN_CACHE_DIR": str(tmp_path)}
    )
    assert cached is not None
    cached.write_bytes(b"not a BPE file")
    shared_tokens.default_estimator.cache_clear()
    try:
        assert tokenizer_name() == "chars/4"
        assert cached.read_bytes() == b"not a BPE file"  # tiktoken never ran
    finally:
        monkeypatch.undo()
        shared_tokens.default_estimator.cache_clear()
