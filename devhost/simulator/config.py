"""The simulator's configuration: deployments and their quota, latency, faults, auth.

Every value object validates itself on construction, so a bad setting fails at start-up (or on
``PUT /_sim/config``) with a message that names it. ``SimulatorConfig.to_dict`` / ``from_dict``
round-trip through JSON, which is how devhost hands the configuration to a simulator subprocess.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devhost.simulator.accounting import PROFILES

AZURE_RPM_PER_1000_TPM = 6
"""Azure's default ratio: a deployment gets 6 requests per minute per 1,000 tokens per minute."""

FAULT_KINDS = (
    "429",
    "timeout",
    "malformed",
    "schema",
    "content_filter",
    "content_filter_completion",
)
"""Named faults besides plain HTTP error statuses (any of 400-599 may also be injected)."""


class ConfigValueError(ValueError):
    """A simulator setting is missing or malformed; the message names the setting."""


def _require(condition: bool, setting: str, problem: str) -> None:
    if not condition:
        raise ConfigValueError(f"{setting}: {problem}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text_or_none(value: object) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


@dataclass(frozen=True)
class DeploymentLimits:
    """Quota of one deployment. ``rpm`` defaults to Azure's 6 RPM per 1,000 TPM.

    ``model`` is the model name reported in responses (defaults to the deployment name).
    ``accounting`` names how calls are charged, windowed and reported
    (``devhost.simulator.accounting``: ``azure``, the default, ``maxtokens-minute`` or
    ``usage-minute``).
    """

    tpm: int
    rpm: int | None = None
    model: str | None = None
    accounting: str = "azure"

    def __post_init__(self) -> None:
        tpm, rpm = self.tpm, self.rpm
        _require(_is_int(tpm) and tpm > 0, "tpm", f"must be a positive integer, got {tpm!r}")
        _require(
            rpm is None or (_is_int(rpm) and rpm > 0),
            "rpm",
            f"must be a positive integer or null, got {rpm!r}",
        )
        _require(_is_text_or_none(self.model), "model", "must be a non-empty string or null")
        _require(
            isinstance(self.accounting, str) and self.accounting in PROFILES,
            "accounting",
            f"must be one of {sorted(PROFILES)}, got {self.accounting!r}",
        )

    @property
    def effective_rpm(self) -> int:
        """Requests per minute: the explicit value, else 6 per 1,000 TPM (at least 1)."""
        if self.rpm is not None:
            return self.rpm
        return max(1, AZURE_RPM_PER_1000_TPM * self.tpm // 1000)


@dataclass(frozen=True)
class LatencyModel:
    """How long an answer takes: ``ttft_ms + per_token_ms * completion_tokens``, +/- ``jitter``.

    ``fixed_ms`` replaces the whole model with one constant delay (benchmarks want that).
    """

    ttft_ms: float = 150.0
    per_token_ms: float = 8.0
    jitter: float = 0.1
    fixed_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "per_token_ms"):
            value = getattr(self, name)
            _require(_is_number(value) and value >= 0, name, f"must be >= 0, got {value!r}")
        _require(
            _is_number(self.jitter) and 0 <= self.jitter < 1,
            "jitter",
            f"must be in [0, 1), got {self.jitter!r}",
        )
        _require(
            self.fixed_ms is None or (_is_number(self.fixed_ms) and self.fixed_ms >= 0),
            "fixed_ms",
            f"must be >= 0 or null, got {self.fixed_ms!r}",
        )


@dataclass(frozen=True)
class Faults:
    """Random faults, drawn per request from a seeded generator.

    ``error_rates`` maps an HTTP status (400-599, 429 included) to its probability. The rates of
    all faults together must not exceed 1. A content-filter fault hits the prompt (HTTP 400) or
    the completion (HTTP 200, ``finish_reason=content_filter``) with equal odds. ``seed`` (None:
    the simulator's seed) makes the sequence of faults reproducible.
    """

    error_rates: dict[int, float] = field(default_factory=dict)
    timeout_rate: float = 0.0
    timeout_s: float = 60.0
    malformed_json_rate: float = 0.0
    schema_violation_rate: float = 0.0
    content_filter_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.error_rates, dict), "error_rates", "must be a mapping")
        for status, rate in self.error_rates.items():
            _require(
                _is_int(status) and 400 <= status <= 599,
                "error_rates",
                f"keys must be HTTP statuses 400-599, got {status!r}",
            )
            _require(
                _is_number(rate) and 0 <= rate <= 1,
                f"error_rates[{status}]",
                f"must be in [0, 1], got {rate!r}",
            )
        for name in (
            "timeout_rate",
            "malformed_json_rate",
            "schema_violation_rate",
            "content_filter_rate",
        ):
            value = getattr(self, name)
            _require(
                _is_number(value) and 0 <= value <= 1, name, f"must be in [0, 1], got {value!r}"
            )
        _require(
            _is_number(self.timeout_s) and self.timeout_s > 0,
            "timeout_s",
            f"must be > 0, got {self.timeout_s!r}",
        )
        _require(self.seed is None or _is_int(self.seed), "seed", "must be an integer or null")
        _require(self.total_rate <= 1 + 1e-9, "faults", f"rates add up to {self.total_rate} > 1")

    @property
    def total_rate(self) -> float:
        """The probability that a request gets any fault at all."""
        return (
            sum(self.error_rates.values())
            + self.timeout_rate
            + self.malformed_json_rate
            + self.schema_violation_rate
            + self.content_filter_rate
        )


ADMIN_KEY_ENV = "SIM_ADMIN_KEY"
"""The environment variable ``python -m devhost.simulator`` takes its admin key from."""
ADMIN_KEY_HEADER = "x-sim-admin-key"
"""The request header the admin routes (``/_sim/*``) read the admin key from."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulator needs. Unknown deployments answer 404 unless ``default_limits``
    is set, in which case they are created on first use with those limits.

    Auth: the ``api-key`` header must equal ``api_key``; ``Authorization: Bearer <token>`` is
    accepted with any non-empty token when ``accept_bearer``, and with the api key as the token
    (how OpenAI-compatible clients send it) in any case. With ``api_key=None`` and
    ``accept_bearer=False`` the simulator does not check credentials at all.

    Admin (``/_sim/*``: stats, configuration and fault injection, reset) takes its own key,
    ``admin_key``, in the ``x-sim-admin-key`` header; chat credentials never open it. With
    ``admin_key=None`` the admin routes answer 403 (the in-process API still works).
    """

    api_key: str | None = "sim-key"
    accept_bearer: bool = True
    admin_key: str | None = None
    deployments: dict[str, DeploymentLimits] = field(default_factory=dict)
    default_limits: DeploymentLimits | None = None
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("api_key", "admin_key"):
            _require(
                _is_text_or_none(getattr(self, key)), key, "must be a non-empty string or null"
            )
        _require(isinstance(self.accept_bearer, bool), "accept_bearer", "must be a boolean")
        _require(isinstance(self.deployments, dict), "deployments", "must be a mapping")
        for name, limits in self.deployments.items():
            _require(
                isinstance(name, str) and bool(name) and "/" not in name,
                "deployments",
                f"deployment names must be non-empty strings without '/', got {name!r}",
            )
            _require(
                isinstance(limits, DeploymentLimits),
                f"deployments[{name}]",
                "must be DeploymentLimits",
            )
        _require(
            self.default_limits is None or isinstance(self.default_limits, DeploymentLimits),
            "default_limits",
            "must be DeploymentLimits or null",
        )
        _require(isinstance(self.latency, LatencyModel), "latency", "must be a LatencyModel")
        _require(isinstance(self.faults, Faults), "faults", "must be Faults")
        _require(_is_int(self.seed), "seed", "must be an integer")

    def admin_authorized(self, offered: str | None) -> bool:
        """Whether ``offered`` (the ``x-sim-admin-key`` header) is the admin key; compared in
        constant time. Always False without an admin key."""
        if self.admin_key is None or offered is None:
            return False
        return hmac.compare_digest(offered.encode(), self.admin_key.encode())

    @property
    def auth_required(self) -> bool:
        """Whether requests must carry credentials at all."""
        return self.api_key is not None or self.accept_bearer

    def limits_for(self, deployment: str) -> DeploymentLimits | None:
        """The deployment's limits, the defaults for an unknown one, or None (-> 404)."""
        return self.deployments.get(deployment, self.default_limits)

    def to_dict(self, *, reveal_key: bool = True) -> dict[str, Any]:
        """A JSON-serialisable form; ``reveal_key=False`` masks the api and admin keys (for GET
        endpoints)."""
        data = dataclasses.asdict(self)
        data["faults"]["error_rates"] = {
            str(status): rate for status, rate in self.faults.error_rates.items()
        }
        if not reveal_key:
            for key in ("api_key", "admin_key"):
                if data[key] is not None:
                    data[key] = "***"
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        """Build a configuration from ``to_dict`` output (or a hand-written subset of it)."""
        return cls().merged(data)

    def merged(self, patch: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with ``patch`` applied: sections are updated field by field, and
        ``deployments`` entries are added or replaced (``null`` removes one).

        Raises ``ConfigValueError`` naming the first bad or unknown setting.
        """
        _require(isinstance(patch, Mapping), "config", "must be a JSON object")
        _reject_unknown(patch, cls_fields(SimulatorConfig), "config")
        changes: dict[str, Any] = {}
        for key in ("api_key", "accept_bearer", "admin_key", "seed"):
            if key in patch:
                changes[key] = patch[key]
        if "latency" in patch:
            changes["latency"] = _merge_section(self.latency, patch["latency"], "latency")
        if "faults" in patch:
            changes["faults"] = _merge_faults(self.faults, patch["faults"])
        if "default_limits" in patch:
            raw = patch["default_limits"]
            changes["default_limits"] = None if raw is None else _limits(raw, "default_limits")
        if "deployments" in patch:
            raw_deployments = patch["deployments"]
            _require(isinstance(raw_deployments, Mapping), "deployments", "must be a JSON object")
            deployments = dict(self.deployments)
            for name, raw in raw_deployments.items():
                if raw is None:
                    deployments.pop(name, None)
                else:
                    deployments[name] = _limits(raw, f"deployments[{name}]")
            changes["deployments"] = deployments
        return dataclasses.replace(self, **changes)


def cls_fields(cls: type) -> set[str]:
    """Field names of a dataclass type."""
    return {f.name for f in dataclasses.fields(cls)}


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    _require(
        not unknown, where, f"unknown setting(s) {unknown}; expected some of {sorted(allowed)}"
    )


def _limits(raw: Any, where: str) -> DeploymentLimits:
    if isinstance(raw, DeploymentLimits):
        return raw
    if _is_number(raw):
        raw = {"tpm": raw}
    _require(isinstance(raw, Mapping), where, "must be a JSON object like {'tpm': 10000}")
    _reject_unknown(raw, cls_fields(DeploymentLimits), where)
    _require("tpm" in raw, where, "tpm is required")
    try:
        return DeploymentLimits(**raw)
    except ConfigValueError as exc:
        raise ConfigValueError(f"{where}.{exc}") from None


def _merge_section(current: Any, raw: Any, where: str) -> Any:
    """``current`` (a settings dataclass) with the fields of ``raw`` replaced."""
    _require(isinstance(raw, Mapping), where, "must be a JSON object")
    _reject_unknown(raw, cls_fields(type(current)), where)
    try:
        return dataclasses.replace(current, **raw)
    except ConfigValueError as exc:
        raise ConfigValueError(f"{where}.{exc}") from None


def _merge_faults(current: Faults, raw: Any) -> Faults:
    """Like :func:`_merge_section`; ``error_rates`` keys arrive as JSON strings ("500")."""
    if isinstance(raw, Mapping) and "error_rates" in raw:
        rates = raw["error_rates"]
        _require(isinstance(rates, Mapping), "faults.error_rates", "must be a JSON object")
        parsed: dict[int, float] = {}
        for status, rate in rates.items():
            try:
                parsed[int(status)] = rate
            except (TypeError, ValueError):
                raise ConfigValueError(
                    f"faults.error_rates: keys must be HTTP statuses, got {status!r}"
                ) from None
        raw = {**raw, "error_rates": parsed}
    merged: Faults = _merge_section(current, raw, "faults")
    return merged
