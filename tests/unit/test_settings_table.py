"""The settings table: every setting the code reads is a row, and the reader reads only rows.

``shared.config.SETTINGS`` and ``devhost.settings.DEVHOST_SETTINGS`` say each setting's kind,
default, bounds and where it is set; ``infra/checks`` holds the Bicep and the sample to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import fields

import pytest

from devhost.settings import DEVHOST_SETTINGS, DevhostSettings
from shared.config import (
    SETTINGS,
    SETTINGS_BY_NAME,
    Kind,
    LLMSettings,
    Settings,
    SettingSpec,
    SettingsReader,
    UnlistedSetting,
    Where,
    table_of,
)
from shared.errors import ConfigError

BASE = {"AZURE_OPENAI_ENDPOINT": "https://example-openai.openai.azure.com"}


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name the code asked it for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._values[key]

    def get(self, key: str, default: object = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return self._values.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_settings_from_env_reads_every_row_of_the_table_and_nothing_else() -> None:
    asked: set[str] = set()
    environments = [
        BASE,
        {**BASE, "STORE_BACKEND": "cosmos", "CosmosConnection__accountEndpoint": "https://c"},
        # A Key Vault reference in Azure makes the reader look for the platform's markers.
        {**BASE, "LLM_PRICES": "@Microsoft.KeyVault(SecretUri=https://v/secrets/p)"},
    ]
    for values in environments:
        env = RecordingEnv(values)
        with pytest.raises(ConfigError) if "LLM_PRICES" in values else nullcontext():
            Settings.from_env(env)
        asked |= env.asked
    assert asked == {spec.name for spec in SETTINGS}


def test_reading_a_setting_the_table_does_not_list_is_a_programming_error() -> None:
    reader = SettingsReader({"NOT_LISTED": "x"}, table=SETTINGS_BY_NAME)
    with pytest.raises(UnlistedSetting, match="NOT_LISTED"):
        reader.text("NOT_LISTED")
    with pytest.raises(UnlistedSetting, match="listed as integer"):
        reader.number("MAX_REVISIONS")  # an integer row read as a number


BOUNDED = [spec for spec in SETTINGS if spec.kind in (Kind.INTEGER, Kind.NUMBER)]


@pytest.mark.parametrize("spec", BOUNDED, ids=lambda spec: spec.name)
def test_bounds_and_defaults_come_from_the_table(spec: SettingSpec) -> None:
    assert spec.high is not None
    assert spec.low is not None
    reader = SettingsReader({spec.name: str(spec.high * 2 + 1)}, table=SETTINGS_BY_NAME)
    read = reader.optional_integer if spec.kind is Kind.INTEGER else reader.optional_number
    with pytest.raises(ConfigError) as caught:
        read(spec.name)
    assert caught.value.setting == spec.name
    assert f"[{spec.low}, {spec.high}]" in caught.value.problem
    unset = SettingsReader({}, table=SETTINGS_BY_NAME)
    unset_read = unset.optional_integer if spec.kind is Kind.INTEGER else unset.optional_number
    assert unset_read(spec.name) == spec.default


def test_the_tables_defaults_are_the_settings_objects_defaults() -> None:
    read = Settings.from_env(BASE)
    default = Settings()
    for field in fields(Settings):
        if field.name != "llm":
            assert getattr(read, field.name) == getattr(default, field.name), field.name
    for field in fields(LLMSettings):
        if field.name not in ("endpoint", "deployments", "max_tokens"):
            assert getattr(read.llm, field.name) == getattr(default.llm, field.name), field.name


def test_a_row_that_cannot_be_read_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match="low and high"):
        SettingSpec("X", Kind.INTEGER, 1)
    with pytest.raises(ValueError, match="not one of its options"):
        SettingSpec("X", Kind.CHOICE, "c", options=("a", "b"))
    with pytest.raises(ValueError, match="not a resource name"):
        SettingSpec("X", Kind.NAME, "bad name!")
    with pytest.raises(ValueError, match="why"):
        SettingSpec("X", Kind.TEXT, set_in=(Where.SAMPLE,))
    with pytest.raises(ValueError, match="listed twice"):
        table_of((SettingSpec("X", Kind.TEXT), SettingSpec("X", Kind.LIST)))


def test_devhost_reads_only_its_own_rows_and_the_app_none_of_them() -> None:
    assert all(spec.name.startswith("DEVHOST_") for spec in DEVHOST_SETTINGS)
    assert all(spec.set_in == (Where.DEVHOST,) for spec in DEVHOST_SETTINGS)
    assert not any(spec.name.startswith("DEVHOST_") for spec in SETTINGS)
    env = RecordingEnv({})
    DevhostSettings.from_env(env)
    assert env.asked == {spec.name for spec in DEVHOST_SETTINGS}
