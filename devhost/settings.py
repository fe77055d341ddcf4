"""devhost's own ``DEVHOST_*`` settings: one table, one reader, one frozen object.

Read once through the app's bounded reader (``shared.config.SettingsReader``), so a value that
cannot work stops ``devhost run`` at start naming the setting (``ConfigError``). The table gives
each setting's kind, default and bounds; reading a setting it does not list is a programming
error, so the table and the reads cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shared.config import Kind, SettingSpec, SettingsReader, Where, table_of

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

_HERE = (Where.DEVHOST,)
_DEVHOST_ONLY = "devhost's own; Azure never runs devhost."

DEVHOST_SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "DEVHOST_LLM",
        Kind.CHOICE,
        "simulator",
        options=("simulator", "external"),
        set_in=_HERE,
        note="simulator: start the LLM simulator; external: use the configured endpoint.",
    ),
    SettingSpec(
        "DEVHOST_LOCK_DURATION_S",
        Kind.NUMBER,
        low=1.0,
        high=300.0,
        set_in=_HERE,
        note=(
            "Every queue's lock duration instead of scale.json's (crash tests use a few seconds "
            "to see expired locks quickly); 1 s to 5 min, as Service Bus allows."
        ),
    ),
    SettingSpec(
        "DEVHOST_CALL_LATENCY_S",
        Kind.NUMBER,
        2.0,
        low=1e-6,
        high=600.0,
        set_in=_HERE,
        note="Seconds per model call the quota planner assumes until calls are measured.",
    ),
    SettingSpec(
        "DEVHOST_LOG_LEVEL",
        Kind.CHOICE,
        "warning",
        options=tuple(level.lower() for level in LOG_LEVELS),
        set_in=_HERE,
        note="The workers' log level, any case.",
    ),
    SettingSpec(
        "DEVHOST_HOP_LOG",
        Kind.TEXT,
        set_in=_HERE,
        note="A directory for per-invocation timings (benchmarks); unset is off.",
    ),
)
"""Every ``DEVHOST_*`` setting devhost reads; all of them are devhost's own."""

DEVHOST_SETTINGS_BY_NAME = table_of(DEVHOST_SETTINGS)


@dataclass(frozen=True)
class DevhostSettings:
    """devhost's own settings (``DEVHOST_SETTINGS`` says what each one means)."""

    llm: Literal["simulator", "external"] = "simulator"
    lock_duration_s: float | None = None
    call_latency_s: float = 2.0
    log_level: str = "WARNING"
    hop_log: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DevhostSettings:
        """Read ``environ`` (default ``os.environ``); ``ConfigError`` names a bad setting."""
        r = SettingsReader(
            os.environ if environ is None else environ, table=DEVHOST_SETTINGS_BY_NAME
        )
        return cls(
            llm=r.choice("DEVHOST_LLM"),  # type: ignore[arg-type]
            lock_duration_s=r.optional_number("DEVHOST_LOCK_DURATION_S"),
            call_latency_s=r.number("DEVHOST_CALL_LATENCY_S"),
            log_level=r.choice("DEVHOST_LOG_LEVEL").upper(),
            hop_log=r.text("DEVHOST_HOP_LOG"),
        )

    def as_env(self) -> dict[str, str]:
        """The normalised values, for the environment of devhost's worker processes."""
        env = {"DEVHOST_LLM": self.llm, "DEVHOST_LOG_LEVEL": self.log_level}
        if self.lock_duration_s is not None:
            env["DEVHOST_LOCK_DURATION_S"] = repr(self.lock_duration_s)
        env["DEVHOST_CALL_LATENCY_S"] = repr(self.call_latency_s)
        if self.hop_log is not None:
            env["DEVHOST_HOP_LOG"] = self.hop_log
        return env


def uses_external_llm(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``DEVHOST_LLM=external``: use the configured endpoint, start no simulator.
    Any value but ``simulator`` or ``external`` is a ``ConfigError``."""
    return DevhostSettings.from_env(environ).llm == "external"
