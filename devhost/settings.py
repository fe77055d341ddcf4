"""devhost's own ``DEVHOST_*`` settings: one table, one reader, one frozen object.

Read once through the app's bounded reader (``shared.config.SettingsReader``), so a value that
cannot work stops ``devhost run`` at start naming the setting (``ConfigError``). The table gives
each setting's kind, default and bounds; reading a setting it does not list is a programming
error, so the table and the reads cannot drift.

``DEVHOST_PARENT_PID`` and ``DEVHOST_DECIDED_AT`` are not settings: devhost writes them into
its children's environment (``lifeline``, ``prefork``) and reads them back there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shared.config import Kind, Secret, SettingSpec, SettingsReader, Where, table_of
from shared.errors import ConfigError

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
PORT_RANGE = (0, 65535)

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
    SettingSpec(
        "DEVHOST_PROFILE",
        Kind.TEXT,
        set_in=_HERE,
        note="A directory for each worker's cProfile of its event loop (benchmarks); unset is off.",
    ),
    SettingSpec(
        "DEVHOST_PREFORK",
        Kind.BOOLEAN,
        True,
        set_in=_HERE,
        note="Fork workers from a template process (Linux only); 0 starts each as an interpreter.",
    ),
    SettingSpec(
        "DEVHOST_AMQP_PORT",
        Kind.TEXT,
        set_in=_HERE,
        note="The AMQP 1.0 port on 127.0.0.1 (0-65535), or off; unset: 5672.",
    ),
    SettingSpec(
        "DEVHOST_AMQP_KEY_NAME",
        Kind.TEXT,
        set_in=_HERE,
        note="The SAS key name the AMQP endpoint accepts; unset: the emulators' well-known one.",
    ),
    SettingSpec(
        "DEVHOST_AMQP_KEY",
        Kind.SECRET,
        set_in=_HERE,
        note="The SAS key the AMQP endpoint accepts; unset: the emulators' well-known one.",
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
    profile: str | None = None
    prefork: bool = True
    amqp_port: int | None = None
    """The AMQP port ``DEVHOST_AMQP_PORT`` names; None when unset or off."""
    amqp_off: bool = False
    amqp_key_name: str | None = None
    amqp_key: Secret | None = None

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
            profile=r.text("DEVHOST_PROFILE"),
            prefork=r.boolean("DEVHOST_PREFORK"),
            amqp_port=_port(r, "DEVHOST_AMQP_PORT"),
            amqp_off=(r.text("DEVHOST_AMQP_PORT") or "").lower() == "off",
            amqp_key_name=r.text("DEVHOST_AMQP_KEY_NAME"),
            amqp_key=r.secret("DEVHOST_AMQP_KEY"),
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


def _port(r: SettingsReader, key: str) -> int | None:
    """A TCP port in ``PORT_RANGE``; None when unset or ``off``."""
    text = r.text(key)
    if text is None or text.lower() == "off":
        return None
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not a port number or off") from None
    if not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
        raise ConfigError(key, f"{port} is outside [{PORT_RANGE[0]}, {PORT_RANGE[1]}]")
    return port


def uses_external_llm(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``DEVHOST_LLM=external``: use the configured endpoint, start no simulator.
    Any value but ``simulator`` or ``external`` is a ``ConfigError``."""
    return DevhostSettings.from_env(environ).llm == "external"
