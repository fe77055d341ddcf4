"""Settings that cannot work are refused at start-up, each naming the setting (issue 10, item 7).

``devhost run`` prints one ``devhost: setting X: problem`` line and exits non-zero before it
starts a simulator or a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devhost import cli
from devhost.environment import Workdir, app_settings
from devhost.settings import DevhostSettings
from shared.config import Settings
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = {"AZURE_OPENAI_ENDPOINT": "https://example-openai.openai.azure.com"}


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("LLM_DEPLOYMENT_TPM", "x=0", "outside [1, "),
        ("LLM_DEPLOYMENT_TPM", "x=-5", "outside [1, "),
        ("LLM_DEPLOYMENT_TPM", "x=abc", "not a whole number"),
        ("LLM_DEPLOYMENT_TPM", "x=1.5", "not a whole number"),
        ("LLM_DEPLOYMENT_TPM", "gpt-4o=1000,x=0", "'x=0'"),
        ("LLM_PRICES", "x=nan/nan", "finite number"),
        ("LLM_PRICES", "x=0.15/inf", "finite number"),
        ("LLM_PRICES", "x=-1/2", "at least 0"),
        ("LLM_PRICES", "x=cheap", "not a price"),
        ("LLM_PRICES", "x=nan", "finite number"),
    ],
)
def test_app_settings_that_cannot_work_are_refused(setting: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, setting: value})
    assert caught.value.setting == setting
    assert problem in caught.value.problem


def test_good_quotas_and_prices_are_kept() -> None:
    settings = Settings.from_env(
        {**BASE, "LLM_DEPLOYMENT_TPM": "a=1,b=240000", "LLM_PRICES": "a=0/0,b=0.15/0.6,c=2"}
    )
    assert settings.llm.deployment_tpm == {"a": 1, "b": 240_000}
    assert settings.llm.prices_per_million == {"a": (0.0, 0.0), "b": (0.15, 0.6), "c": (2.0, 2.0)}


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("DEVHOST_LOCK_DURATION_S", "abc", "not a number"),
        ("DEVHOST_LOCK_DURATION_S", "0", "outside"),
        ("DEVHOST_LOCK_DURATION_S", "-4", "outside"),
        ("DEVHOST_LOCK_DURATION_S", "nan", "outside"),
        ("DEVHOST_LOCK_DURATION_S", "inf", "outside"),
        ("DEVHOST_LOCK_DURATION_S", "301", "outside"),
        ("DEVHOST_CALL_LATENCY_S", "0", "outside"),
        ("DEVHOST_CALL_LATENCY_S", "-1", "outside"),
        ("DEVHOST_CALL_LATENCY_S", "soon", "not a number"),
        ("DEVHOST_LLM", "openai", "not one of simulator, external"),
        ("DEVHOST_LOG_LEVEL", "loud", "not one of"),
        ("DEVHOST_AMQP_PORT", "amqp", "not a port number or off"),
        ("DEVHOST_AMQP_PORT", "70000", "outside [0, 65535]"),
        ("DEVHOST_PREFORK", "maybe", "not a boolean"),
    ],
)
def test_devhost_settings_that_cannot_work_are_refused(
    setting: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        DevhostSettings.from_env({setting: value})
    assert caught.value.setting == setting
    assert problem in caught.value.problem


def test_devhost_settings_are_read_and_normalised_for_the_workers(tmp_path: Path) -> None:
    env = {
        **BASE,
        "DEVHOST_LOCK_DURATION_S": "4",
        "DEVHOST_CALL_LATENCY_S": "0.25",
        "DEVHOST_LOG_LEVEL": "info",
        "DEVHOST_LLM": "External",
    }
    read = DevhostSettings.from_env(env)
    assert read == DevhostSettings(
        llm="external", lock_duration_s=4.0, call_latency_s=0.25, log_level="INFO"
    )
    assert DevhostSettings.from_env({}) == DevhostSettings()
    values = app_settings(
        Workdir(tmp_path / "dh"), simulator_url=None, project_root=tmp_path, environ=env
    )
    # The workers pass DEVHOST_LOG_LEVEL to logging, which knows only upper-case names.
    assert values["DEVHOST_LOG_LEVEL"] == "INFO"
    assert values["DEVHOST_LLM"] == "external"


@pytest.mark.parametrize(
    ("content", "setting", "problem"),
    [
        ('{"Values": {"A": "1",}}', "local.settings.json", "not valid JSON"),
        ("[1, 2]", "local.settings.json", "JSON object"),
        ('{"Values": ["A=1"]}', "local.settings.json", '"Values" must be an object'),
        ('{"Values": {"A": {"b": 1}}}', "local.settings.json Values.A", "not JSON"),
        (b"\xff\xfe{}", "local.settings.json", "cannot be read"),
    ],
)
def test_a_malformed_local_settings_file_is_refused(
    tmp_path: Path, content: str | bytes, setting: str, problem: str
) -> None:
    path = tmp_path / "local.settings.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        app_settings(
            Workdir(tmp_path / "dh"), simulator_url=None, project_root=tmp_path, environ=BASE
        )
    assert caught.value.setting == setting
    assert problem in caught.value.problem


def test_a_well_formed_local_settings_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": {"MAX_REVISIONS": 1, "X": "<fill in>"}})
    )
    values = app_settings(
        Workdir(tmp_path / "dh"), simulator_url=None, project_root=tmp_path, environ=BASE
    )
    assert values["MAX_REVISIONS"] == "1"
    assert "X" not in values  # a placeholder is not a value


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("LLM_DEPLOYMENT_TPM", "x=0"),
        ("LLM_PRICES", "x=nan/nan"),
        ("DEVHOST_LOCK_DURATION_S", "soon"),
        ("DEVHOST_CALL_LATENCY_S", "-1"),
        ("DEVHOST_LLM", "maybe"),
    ],
)
def test_devhost_run_refuses_to_start_naming_the_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    value: str,
) -> None:
    monkeypatch.setenv(setting, value)
    code = cli.main(["--workdir", str(tmp_path / "dh"), "run", "--port", "0"])
    out = capsys.readouterr().out
    assert code != 0
    lines = [line for line in out.splitlines() if line.startswith("devhost:")]
    assert len(lines) == 1, out
    assert lines[0].startswith(f"devhost: setting {setting}: ")
    # Refused before anything started: no state file, no simulator or worker log lines.
    assert not (tmp_path / "dh" / "state.json").exists()


def test_devhost_run_as_a_process_prints_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    env = {**os.environ, "LLM_DEPLOYMENT_TPM": "x=-5", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "devhost", "--workdir", str(tmp_path / "dh"), "run", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "devhost: setting LLM_DEPLOYMENT_TPM: 'x=-5': -5 tokens per minute is outside [1, "
        "1000000000]"
    ]
    assert "Traceback" not in done.stderr


def test_the_amqp_port_prefork_and_profile_are_devhost_settings() -> None:
    assert DevhostSettings.from_env({"DEVHOST_AMQP_PORT": "OFF"}).amqp_off
    read = DevhostSettings.from_env(
        {"DEVHOST_AMQP_PORT": "5673", "DEVHOST_PREFORK": "0", "DEVHOST_PROFILE": "/tmp/p"}
    )
    assert (read.amqp_port, read.amqp_off, read.prefork, read.profile) == (
        5673,
        False,
        False,
        "/tmp/p",
    )
    assert DevhostSettings().amqp_port is None  # unset: the AMQP server's default port
