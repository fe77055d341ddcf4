"""One settings object, built from the environment in one place, failing fast and by name.

Secrets are only ever Key Vault references in Azure (the platform resolves them before the app
starts). Outside Azure a reference is resolved with ``azure-keyvault-secrets`` through
``DefaultAzureCredential``; inside Azure an unresolved reference means the platform could not
resolve it, and start-up stops.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from shared.domain.messages import Stage
from shared.errors import ConfigError

KEYVAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\((?P<body>.*)\)\s*$", re.IGNORECASE)

SecretResolver = Callable[[str, str], str]
"""(setting name, Key Vault reference body) -> secret value."""


class Secret:
    """A string that never shows itself in ``repr``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class QueueNames:
    intent: str = "intent"
    response: str = "response"
    critic: str = "critic"
    escalation: str = "escalation"
    deadletter: str = "deadletter"

    def for_stage(self, stage: Stage) -> str:
        name: str = getattr(self, stage.value)
        return name

    def all(self) -> tuple[str, ...]:
        return (self.intent, self.response, self.critic, self.escalation, self.deadletter)


@dataclass(frozen=True)
class LLMSettings:
    """How agents reach a chat-completion endpoint, and the guards around every call."""

    endpoint: str | None = None
    base_url: str | None = None
    api_key: Secret | None = None
    api_version: str = "2024-10-21"
    managed_identity_client_id: str | None = None
    deployments: Mapping[Stage, tuple[str, ...]] = field(default_factory=dict)
    deployment_tpm: Mapping[str, int] = field(default_factory=dict)
    prices_per_million: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_tokens: Mapping[Stage, int] = field(default_factory=dict)
    timeout_s: float = 20.0
    wait_budget_s: float = 10.0
    total_budget_s: float = 900.0
    cache_enabled: bool = True
    customer_daily_token_budget: int | None = None
    breaker_failures: int = 5
    breaker_cooldown_s: float = 15.0
    breaker_error_rate: float = 0.5
    breaker_window_s: float = 30.0
    breaker_min_calls: int = 10
    max_attempts: int = 3
    cache_ttl_s: float = 3600.0
    cache_max_entries: int = 4096
    quota_backend: Literal["local", "sqlite", "store"] = "local"
    quota_sqlite_path: str = ".devhost/quota.sqlite3"
    quota_heartbeat_s: float = 5.0

    def deployments_for(self, stage: Stage) -> tuple[str, ...]:
        """The deployments that may serve ``stage``: the primary first, then the fallbacks."""
        return self.deployments.get(stage, ("gpt-4o-mini",))

    def price_of(self, deployment: str, prompt_tokens: int, completion_tokens: int) -> float:
        """The list price in USD of one call, from ``prices_per_million``; 0 when unpriced."""
        prompt_price, completion_price = self.prices_per_million.get(deployment, (0.0, 0.0))
        return (prompt_tokens * prompt_price + completion_tokens * completion_price) / 1_000_000


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline reads from its environment."""

    queues: QueueNames = field(default_factory=QueueNames)
    eventhub_name: str = "requests"
    eventhub_consumer_group: str = "switchboard"
    batch_container: str = "batches"
    store_backend: Literal["cosmos", "sqlite"] = "sqlite"
    sqlite_path: str = ".devhost/store.sqlite3"
    cosmos_endpoint: str | None = None
    cosmos_database: str = "switchboard"
    conversations_container: str = "conversations"
    batches_container: str = "batches"
    quota_container: str = "quota"
    servicebus_namespace: str | None = None
    servicebus_connection_string: Secret | None = None
    """``ServiceBusConnection``: a connection string instead of the identity settings; the
    Functions extensions use it when set (an emulator's, devhost's AMQP endpoint)."""
    eventhub_namespace: str | None = None
    eventhub_connection_string: Secret | None = None
    """``EventHubConnection``: as ``servicebus_connection_string``, for the ingest hub."""
    managed_identity_client_id: str | None = None
    outcomes_topic: str = "outcomes"
    ingress_rate_per_minute: float = 60.0
    """Requests a customer may send per minute at ingress, on average (0: no limit)."""
    ingress_burst: int = 20
    """How many requests a customer may send at once before the rate applies."""
    max_revisions: int = 2
    llm: LLMSettings = field(default_factory=LLMSettings)
    telemetry_exporter: Literal["none", "console", "otlp", "azuremonitor"] = "none"
    otlp_endpoint: str | None = None
    appinsights_connection_string: str | None = None
    service_name: str = "switchboard"

    @property
    def container_partition_keys(self) -> dict[str, str]:
        return {
            self.conversations_container: "/conversationId",
            self.batches_container: "/batchId",
            self.quota_container: "/id",
        }

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, resolve_secret: SecretResolver | None = None
    ) -> Settings:
        """Build settings from ``env``; raise ``ConfigError`` naming the first bad setting."""
        r = _Reader(env, resolve_secret=resolve_secret)
        backend = r.choice("STORE_BACKEND", ("cosmos", "sqlite"), "sqlite")
        client_id = r.optional("AZURE_CLIENT_ID") or r.optional("ServiceBusConnection__clientId")
        settings = cls(
            queues=QueueNames(
                intent=r.name("QUEUE_INTENT", "intent"),
                response=r.name("QUEUE_RESPONSE", "response"),
                critic=r.name("QUEUE_CRITIC", "critic"),
                escalation=r.name("QUEUE_ESCALATION", "escalation"),
                deadletter=r.name("QUEUE_DEADLETTER", "deadletter"),
            ),
            eventhub_name=r.name("EVENTHUB_NAME", "requests"),
            eventhub_consumer_group=r.name("EVENTHUB_CONSUMER_GROUP", "switchboard"),
            batch_container=r.name("BATCH_CONTAINER", "batches"),
            store_backend=backend,  # type: ignore[arg-type]
            sqlite_path=r.optional("SQLITE_PATH") or ".devhost/store.sqlite3",
            cosmos_endpoint=(
                r.url("CosmosConnection__accountEndpoint") if backend == "cosmos" else None
            ),
            cosmos_database=r.name("COSMOS_DATABASE", "switchboard"),
            conversations_container=r.name("COSMOS_CONTAINER_CONVERSATIONS", "conversations"),
            batches_container=r.name("COSMOS_CONTAINER_BATCHES", "batches"),
            quota_container=r.name("COSMOS_CONTAINER_QUOTA", "quota"),
            servicebus_namespace=r.optional("ServiceBusConnection__fullyQualifiedNamespace"),
            servicebus_connection_string=r.secret("ServiceBusConnection"),
            eventhub_namespace=r.optional("EventHubConnection__fullyQualifiedNamespace"),
            eventhub_connection_string=r.secret("EventHubConnection"),
            managed_identity_client_id=client_id,
            outcomes_topic=r.name("TOPIC_OUTCOMES", "outcomes"),
            ingress_rate_per_minute=r.number("INGRESS_RATE_PER_MINUTE", 60.0, low=0, high=1e6),
            ingress_burst=r.integer("INGRESS_BURST", 20, low=1, high=100_000),
            max_revisions=r.integer("MAX_REVISIONS", 2, low=0, high=10),
            llm=_llm_settings(r, client_id),
            telemetry_exporter=r.choice(  # type: ignore[arg-type]
                "TELEMETRY_EXPORTER", ("none", "console", "otlp", "azuremonitor"), "none"
            ),
            otlp_endpoint=r.optional("OTEL_EXPORTER_OTLP_ENDPOINT"),
            appinsights_connection_string=r.optional("APPLICATIONINSIGHTS_CONNECTION_STRING"),
            service_name=r.optional("OTEL_SERVICE_NAME") or "switchboard",
        )
        if (
            settings.telemetry_exporter == "azuremonitor"
            and not settings.appinsights_connection_string
        ):
            raise ConfigError(
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
                "required when TELEMETRY_EXPORTER=azuremonitor",
            )
        return settings


def _llm_settings(r: _Reader, client_id: str | None) -> LLMSettings:
    endpoint = r.url("AZURE_OPENAI_ENDPOINT", required=False)
    base_url = r.url("OPENAI_BASE_URL", required=False)
    if endpoint is None and base_url is None:
        raise ConfigError(
            "AZURE_OPENAI_ENDPOINT", "missing: set it, or OPENAI_BASE_URL for another endpoint"
        )
    default = r.optional("LLM_DEPLOYMENT") or "gpt-4o-mini"
    fallbacks = r.list("LLM_FALLBACK_DEPLOYMENTS")
    # A model per stage (e.g. a small one for intent and critic), each with its own fallbacks
    # when LLM_FALLBACK_DEPLOYMENTS_<STAGE> is set, else the shared list; duplicates dropped.
    deployments = {
        stage: tuple(
            dict.fromkeys(
                (
                    r.optional(f"LLM_DEPLOYMENT_{stage.name}") or default,
                    *(r.list(f"LLM_FALLBACK_DEPLOYMENTS_{stage.name}") or fallbacks),
                )
            )
        )
        for stage in Stage
    }
    max_tokens = {
        stage: r.integer(f"LLM_MAX_TOKENS_{stage.name}", dflt, low=16, high=16384)
        for stage, dflt in (
            (Stage.INTENT, 200),
            (Stage.RESPONSE, 400),
            (Stage.CRITIC, 250),
            (Stage.ESCALATION, 300),
        )
    }
    api_key = r.secret("AZURE_OPENAI_API_KEY")
    if base_url is not None and endpoint is None and api_key is None:
        raise ConfigError("AZURE_OPENAI_API_KEY", "required with OPENAI_BASE_URL")
    llm = LLMSettings(
        endpoint=endpoint,
        base_url=base_url,
        api_key=api_key,
        api_version=r.optional("AZURE_OPENAI_API_VERSION") or "2024-10-21",
        managed_identity_client_id=client_id,
        deployments=deployments,
        deployment_tpm=r.mapping("LLM_DEPLOYMENT_TPM", _tokens_per_minute),
        prices_per_million=r.mapping("LLM_PRICES", _price_pair),
        max_tokens=max_tokens,
        timeout_s=r.number("LLM_TIMEOUT_S", 20.0, low=0.1, high=45.0),
        wait_budget_s=r.number("LLM_WAIT_BUDGET_S", 10.0, low=0.0, high=120.0),
        total_budget_s=r.number("LLM_TOTAL_BUDGET_S", 900.0, low=1.0, high=86400.0),
        cache_enabled=r.boolean("LLM_CACHE_ENABLED", True),
        customer_daily_token_budget=r.optional_integer("CUSTOMER_DAILY_TOKEN_BUDGET"),
        breaker_failures=r.integer("LLM_BREAKER_FAILURES", 5, low=1, high=1000),
        breaker_cooldown_s=r.number("LLM_BREAKER_COOLDOWN_S", 15.0, low=0.1, high=3600.0),
        breaker_error_rate=r.number("LLM_BREAKER_ERROR_RATE", 0.5, low=0.01, high=1.0),
        breaker_window_s=r.number("LLM_BREAKER_WINDOW_S", 30.0, low=1.0, high=3600.0),
        breaker_min_calls=r.integer("LLM_BREAKER_MIN_CALLS", 10, low=1, high=100000),
        max_attempts=r.integer("LLM_MAX_ATTEMPTS", 3, low=1, high=10),
        cache_ttl_s=r.number("LLM_CACHE_TTL_S", 3600.0, low=1.0, high=7 * 86400.0),
        cache_max_entries=r.integer("LLM_CACHE_MAX_ENTRIES", 4096, low=1, high=10**7),
        quota_backend=r.choice(  # type: ignore[arg-type]
            "LLM_QUOTA_BACKEND", ("local", "sqlite", "store"), "local"
        ),
        quota_sqlite_path=r.optional("LLM_QUOTA_SQLITE_PATH") or ".devhost/quota.sqlite3",
        quota_heartbeat_s=r.number("LLM_QUOTA_HEARTBEAT_S", 5.0, low=0.5, high=300.0),
    )
    # A call holds a Service Bus message lock (lockDuration 60 s) while it waits for quota and
    # then runs; both together must end well inside the lock.
    if llm.wait_budget_s + llm.timeout_s > LLM_LOCK_BUDGET_S:
        raise ConfigError(
            "LLM_TIMEOUT_S",
            f"LLM_WAIT_BUDGET_S + LLM_TIMEOUT_S is {llm.wait_budget_s + llm.timeout_s:g}s; "
            f"keep it at most {LLM_LOCK_BUDGET_S:g}s, under the 60 s message lock",
        )
    return llm


LLM_LOCK_BUDGET_S = 50.0
"""The longest one LLM call may hold a message lock: quota wait plus call timeout."""


MAX_DEPLOYMENT_TPM = 1_000_000_000
"""The largest tokens-per-minute quota a deployment setting may name (far above any Azure one)."""


def _tokens_per_minute(text: str) -> int:
    """A deployment's quota: a whole number of tokens per minute, at least 1. A quota of 0 or
    less admits no call at all, so every conversation would wait for ever."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of tokens per minute") from None
    if not 1 <= value <= MAX_DEPLOYMENT_TPM:
        raise ValueError(f"{value} tokens per minute is outside [1, {MAX_DEPLOYMENT_TPM}]")
    return value


def _price_pair(text: str) -> tuple[float, float]:
    """``input/output`` USD per million tokens (one number prices both). Each must be a finite
    number of at least 0: a NaN or infinite price would make every cost record unwritable."""
    prompt, _, completion = text.partition("/")
    prices = []
    for part in (prompt, completion or prompt):
        try:
            price = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a price") from None
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price {part.strip()!r} must be a finite number of at least 0")
        prices.append(price)
    return prices[0], prices[1]


_T = TypeVar("_T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$")


class _Reader:
    """Typed reads of single settings, each failing with the setting's name."""

    def __init__(self, env: Mapping[str, str], *, resolve_secret: SecretResolver | None) -> None:
        self._env = env
        self._resolve = resolve_secret

    def raw(self, key: str) -> str | None:
        value = self._env.get(key)
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        match = KEYVAULT_REFERENCE.match(value)
        if match:
            value = self._resolve_reference(key, match.group("body"))
        return value

    def _resolve_reference(self, key: str, body: str) -> str:
        if self._env.get("WEBSITE_SITE_NAME") or self._env.get("WEBSITE_INSTANCE_ID"):
            raise ConfigError(
                key,
                "is an unresolved Key Vault reference; check the app's identity has "
                "'Key Vault Secrets User' on the vault and the reference is correct",
            )
        if self._resolve is None:
            raise ConfigError(key, "is a Key Vault reference and no resolver is configured")
        try:
            return self._resolve(key, body)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                key, f"Key Vault reference could not be resolved ({exc.__class__.__name__})"
            ) from None

    def optional(self, key: str) -> str | None:
        return self.raw(key)

    def name(self, key: str, default: str) -> str:
        value = self.raw(key) or default
        if not _NAME.match(value):
            raise ConfigError(key, f"{value!r} is not a valid resource name")
        return value

    def url(self, key: str, *, required: bool = True) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise ConfigError(key, "missing")
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(key, "must be an http(s) URL")
        return value

    def secret(self, key: str) -> Secret | None:
        value = self.raw(key)
        return Secret(value) if value is not None else None

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = (self.raw(key) or default).lower()
        if value not in options:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        text = self.raw(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ConfigError(key, f"{value} is outside [{low}, {high}]")
        return value

    def optional_integer(self, key: str) -> int | None:
        if self.raw(key) is None:
            return None
        return self.integer(key, 0, low=1, high=10**12)

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        text = self.raw(key)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(key, f"{value} is outside [{low}, {high}]")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        text = self.raw(key)
        if text is None:
            return default
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"{text!r} is not a boolean")

    def list(self, key: str) -> tuple[str, ...]:
        text = self.raw(key)
        if text is None:
            return ()
        return tuple(part.strip() for part in text.split(",") if part.strip())

    def mapping(self, key: str, convert: Callable[[str], _T]) -> dict[str, _T]:
        """Parse ``name=value,name=value``."""
        result: dict[str, _T] = {}
        for item in self.list(key):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(key, f"{item!r} is not name=value")
            try:
                result[name.strip()] = convert(value.strip())
            except ValueError as exc:
                raise ConfigError(key, f"{item!r}: {exc}") from None
        return result


SettingsReader = _Reader
"""The reader for other settings objects (devhost's own), with the same bounded, named reads."""
