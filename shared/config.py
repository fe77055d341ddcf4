"""One settings object, built from the environment in one place, failing fast and by name.

``SETTINGS`` lists every setting ``Settings.from_env`` reads (kind, default, bounds or options,
when it is required, where it is set); the reader reads only through it, and ``infra/checks``
holds the Bicep and ``local.settings.sample.json`` to it. A new setting is a row, then a read.

Secrets are only ever Key Vault references in Azure (the platform resolves them before the app
starts). Outside Azure a reference is resolved with ``azure-keyvault-secrets`` through
``DefaultAzureCredential``; inside Azure an unresolved reference means the platform could not
resolve it, and start-up stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared.domain.messages import Stage
from shared.errors import ConfigError
from shared.settings_reader import (
    HOST,
    KEYVAULT_REFERENCE,
    LOCAL_ONLY,
    PLATFORM_MARKERS,
    Kind,
    Secret,
    SecretResolver,
    SettingSpec,
    SettingsReader,
    UnlistedSetting,
    Where,
    table_of,
)

__all__ = [
    "KEYVAULT_REFERENCE",
    "LLM_LOCK_BUDGET_S",
    "MAX_DEPLOYMENT_TPM",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Kind",
    "LLMSettings",
    "QueueNames",
    "Secret",
    "SecretResolver",
    "SettingSpec",
    "Settings",
    "SettingsReader",
    "UnlistedSetting",
    "Where",
    "table_of",
]


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
        return _settings(SettingsReader(env, table=SETTINGS_BY_NAME, resolve_secret=resolve_secret))


# ----------------------------------------------------------------------------------------------
# The table: every setting Settings.from_env reads. A new setting is a new row here, then a read
# in _settings or _llm_settings; infra/checks holds the Bicep and the sample to this table.
# ----------------------------------------------------------------------------------------------

_S = SettingSpec
_K = Kind
_CONNECTION_STRING_NOTE = (
    "A connection string instead of the identity settings, for devhost's AMQP endpoint or an "
    "emulator; Azure connects with the managed identity, and keys stay out of app settings. "
    "Not in the sample either: a key named exactly after the connection is the connection "
    "string the Functions extensions use, so even an empty one would compete with the identity."
)

SETTINGS: tuple[SettingSpec, ...] = (
    _S("STORE_BACKEND", _K.CHOICE, "sqlite", options=("cosmos", "sqlite")),
    _S("AZURE_CLIENT_ID", _K.TEXT, note="The user-assigned identity's client id."),
    _S("ServiceBusConnection__clientId", _K.TEXT),
    *(_S(f"QUEUE_{queue.upper()}", _K.NAME, queue) for queue in QueueNames().all()),
    _S("EVENTHUB_NAME", _K.NAME, "requests"),
    _S("EVENTHUB_CONSUMER_GROUP", _K.NAME, "switchboard"),
    _S("BATCH_CONTAINER", _K.NAME, "batches", note="The blob container of batch uploads."),
    _S(
        "SQLITE_PATH",
        _K.TEXT,
        ".devhost/store.sqlite3",
        set_in=LOCAL_ONLY,
        note="The SQLite store backs devhost; Azure runs STORE_BACKEND=cosmos.",
    ),
    _S("CosmosConnection__accountEndpoint", _K.URL, required_when="STORE_BACKEND=cosmos"),
    _S("COSMOS_DATABASE", _K.NAME, "switchboard"),
    _S("COSMOS_CONTAINER_CONVERSATIONS", _K.NAME, "conversations"),
    _S("COSMOS_CONTAINER_BATCHES", _K.NAME, "batches"),
    _S("COSMOS_CONTAINER_QUOTA", _K.NAME, "quota"),
    _S("ServiceBusConnection__fullyQualifiedNamespace", _K.TEXT),
    _S(
        "ServiceBusConnection",
        _K.SECRET,
        set_in=(Where.LOCAL_ALTERNATIVE,),
        note=_CONNECTION_STRING_NOTE,
    ),
    _S("EventHubConnection__fullyQualifiedNamespace", _K.TEXT),
    _S(
        "EventHubConnection",
        _K.SECRET,
        set_in=(Where.LOCAL_ALTERNATIVE,),
        note=_CONNECTION_STRING_NOTE,
    ),
    _S("TOPIC_OUTCOMES", _K.NAME, "outcomes"),
    _S("INGRESS_RATE_PER_MINUTE", _K.NUMBER, 60.0, low=0, high=1e6, note="0: no limit."),
    _S("INGRESS_BURST", _K.INTEGER, 20, low=1, high=100_000),
    _S("MAX_REVISIONS", _K.INTEGER, 2, low=0, high=10),
    # The model endpoint: Azure OpenAI by managed identity, or an OpenAI-compatible one by key.
    _S("AZURE_OPENAI_ENDPOINT", _K.URL, required_when="OPENAI_BASE_URL is unset"),
    _S(
        "OPENAI_BASE_URL",
        _K.URL,
        set_in=LOCAL_ONLY,
        note=(
            "Selects a non-Azure OpenAI-compatible endpoint (the devhost simulator, Ollama, "
            "vLLM); Azure uses AZURE_OPENAI_ENDPOINT."
        ),
    ),
    _S("LLM_DEPLOYMENT", _K.TEXT, "gpt-4o-mini", note="Every stage's model unless its own is set."),
    _S("LLM_FALLBACK_DEPLOYMENTS", _K.LIST),
    *(_S(f"LLM_DEPLOYMENT_{stage.name}", _K.TEXT) for stage in Stage),
    *(_S(f"LLM_FALLBACK_DEPLOYMENTS_{stage.name}", _K.LIST) for stage in Stage),
    *(
        _S(f"LLM_MAX_TOKENS_{stage.name}", _K.INTEGER, tokens, low=16, high=16384)
        for stage, tokens in zip(Stage, (200, 400, 250, 300), strict=True)
    ),
    _S(
        "AZURE_OPENAI_API_KEY",
        _K.SECRET,
        required_when="OPENAI_BASE_URL is set and AZURE_OPENAI_ENDPOINT is not",
        set_in=LOCAL_ONLY,
        note=(
            "Azure calls Azure OpenAI with the managed identity; a key is only for the simulator "
            "or another OpenAI-compatible endpoint, and keys stay out of Azure app settings."
        ),
    ),
    _S("AZURE_OPENAI_API_VERSION", _K.TEXT, "2024-10-21"),
    _S("LLM_DEPLOYMENT_TPM", _K.MAPPING, note="deployment=tokens per minute, comma-separated."),
    _S("LLM_PRICES", _K.MAPPING, note="deployment=input/output USD per million tokens."),
    _S("LLM_TIMEOUT_S", _K.NUMBER, 20.0, low=0.1, high=45.0),
    _S("LLM_WAIT_BUDGET_S", _K.NUMBER, 10.0, low=0.0, high=120.0),
    _S("LLM_TOTAL_BUDGET_S", _K.NUMBER, 900.0, low=1.0, high=86400.0),
    _S("LLM_CACHE_ENABLED", _K.BOOLEAN, True),
    _S("CUSTOMER_DAILY_TOKEN_BUDGET", _K.INTEGER, low=1, high=10**12, note="Unset: no budget."),
    _S("LLM_BREAKER_FAILURES", _K.INTEGER, 5, low=1, high=1000),
    _S("LLM_BREAKER_COOLDOWN_S", _K.NUMBER, 15.0, low=0.1, high=3600.0),
    _S("LLM_BREAKER_ERROR_RATE", _K.NUMBER, 0.5, low=0.01, high=1.0),
    _S("LLM_BREAKER_WINDOW_S", _K.NUMBER, 30.0, low=1.0, high=3600.0),
    _S("LLM_BREAKER_MIN_CALLS", _K.INTEGER, 10, low=1, high=100000),
    _S("LLM_MAX_ATTEMPTS", _K.INTEGER, 3, low=1, high=10),
    _S("LLM_CACHE_TTL_S", _K.NUMBER, 3600.0, low=1.0, high=7 * 86400.0),
    _S("LLM_CACHE_MAX_ENTRIES", _K.INTEGER, 4096, low=1, high=10**7),
    _S("LLM_QUOTA_BACKEND", _K.CHOICE, "local", options=("local", "sqlite", "store")),
    _S(
        "LLM_QUOTA_SQLITE_PATH",
        _K.TEXT,
        ".devhost/quota.sqlite3",
        set_in=LOCAL_ONLY,
        note=(
            "The SQLite quota ledger is devhost's; Azure runs LLM_QUOTA_BACKEND=store (Cosmos DB)."
        ),
    ),
    _S("LLM_QUOTA_HEARTBEAT_S", _K.NUMBER, 5.0, low=0.5, high=300.0),
    _S(
        "TELEMETRY_EXPORTER",
        _K.CHOICE,
        "none",
        options=("none", "console", "otlp", "azuremonitor"),
    ),
    _S(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        _K.TEXT,
        set_in=LOCAL_ONLY,
        note=(
            "A local OpenTelemetry collector; Azure exports to Application Insights "
            "(TELEMETRY_EXPORTER=azuremonitor)."
        ),
    ),
    _S(
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        _K.TEXT,
        required_when="TELEMETRY_EXPORTER=azuremonitor",
    ),
    _S("OTEL_SERVICE_NAME", _K.TEXT, "switchboard"),
    *(
        _S(marker, _K.TEXT, set_in=HOST, note="Tells the code it runs in Azure.")
        for marker in PLATFORM_MARKERS
    ),
)
"""Every setting ``Settings.from_env`` reads: kind, default, bounds, where it is set."""

SETTINGS_BY_NAME = table_of(SETTINGS)


def _settings(r: SettingsReader) -> Settings:
    """The settings ``r`` reads, in the order a first bad one is reported."""
    backend = r.choice("STORE_BACKEND")
    client_id = r.text("AZURE_CLIENT_ID") or r.text("ServiceBusConnection__clientId")
    settings = Settings(
        queues=QueueNames(
            intent=r.name("QUEUE_INTENT"),
            response=r.name("QUEUE_RESPONSE"),
            critic=r.name("QUEUE_CRITIC"),
            escalation=r.name("QUEUE_ESCALATION"),
            deadletter=r.name("QUEUE_DEADLETTER"),
        ),
        eventhub_name=r.name("EVENTHUB_NAME"),
        eventhub_consumer_group=r.name("EVENTHUB_CONSUMER_GROUP"),
        batch_container=r.name("BATCH_CONTAINER"),
        store_backend=backend,  # type: ignore[arg-type]
        sqlite_path=str(r.text("SQLITE_PATH")),
        cosmos_endpoint=(
            r.url("CosmosConnection__accountEndpoint", required=True)
            if backend == "cosmos"
            else None
        ),
        cosmos_database=r.name("COSMOS_DATABASE"),
        conversations_container=r.name("COSMOS_CONTAINER_CONVERSATIONS"),
        batches_container=r.name("COSMOS_CONTAINER_BATCHES"),
        quota_container=r.name("COSMOS_CONTAINER_QUOTA"),
        servicebus_namespace=r.text("ServiceBusConnection__fullyQualifiedNamespace"),
        servicebus_connection_string=r.secret("ServiceBusConnection"),
        eventhub_namespace=r.text("EventHubConnection__fullyQualifiedNamespace"),
        eventhub_connection_string=r.secret("EventHubConnection"),
        managed_identity_client_id=client_id,
        outcomes_topic=r.name("TOPIC_OUTCOMES"),
        ingress_rate_per_minute=r.number("INGRESS_RATE_PER_MINUTE"),
        ingress_burst=r.integer("INGRESS_BURST"),
        max_revisions=r.integer("MAX_REVISIONS"),
        llm=_llm_settings(r, client_id),
        telemetry_exporter=r.choice("TELEMETRY_EXPORTER"),  # type: ignore[arg-type]
        otlp_endpoint=r.text("OTEL_EXPORTER_OTLP_ENDPOINT"),
        appinsights_connection_string=r.text("APPLICATIONINSIGHTS_CONNECTION_STRING"),
        service_name=str(r.text("OTEL_SERVICE_NAME")),
    )
    if settings.telemetry_exporter == "azuremonitor" and not settings.appinsights_connection_string:
        raise ConfigError(
            "APPLICATIONINSIGHTS_CONNECTION_STRING", "required when TELEMETRY_EXPORTER=azuremonitor"
        )
    return settings


def _llm_settings(r: SettingsReader, client_id: str | None) -> LLMSettings:
    endpoint = r.url("AZURE_OPENAI_ENDPOINT")
    base_url = r.url("OPENAI_BASE_URL")
    if endpoint is None and base_url is None:
        raise ConfigError(
            "AZURE_OPENAI_ENDPOINT", "missing: set it, or OPENAI_BASE_URL for another endpoint"
        )
    deployments = _deployments(r)
    max_tokens = {stage: r.integer(f"LLM_MAX_TOKENS_{stage.name}") for stage in Stage}
    api_key = r.secret("AZURE_OPENAI_API_KEY")
    if base_url is not None and endpoint is None and api_key is None:
        raise ConfigError("AZURE_OPENAI_API_KEY", "required with OPENAI_BASE_URL")
    llm = LLMSettings(
        endpoint=endpoint,
        base_url=base_url,
        api_key=api_key,
        api_version=str(r.text("AZURE_OPENAI_API_VERSION")),
        managed_identity_client_id=client_id,
        deployments=deployments,
        deployment_tpm=r.mapping("LLM_DEPLOYMENT_TPM", _tokens_per_minute),
        prices_per_million=r.mapping("LLM_PRICES", _price_pair),
        max_tokens=max_tokens,
        timeout_s=r.number("LLM_TIMEOUT_S"),
        wait_budget_s=r.number("LLM_WAIT_BUDGET_S"),
        total_budget_s=r.number("LLM_TOTAL_BUDGET_S"),
        cache_enabled=r.boolean("LLM_CACHE_ENABLED"),
        customer_daily_token_budget=r.optional_integer("CUSTOMER_DAILY_TOKEN_BUDGET"),
        breaker_failures=r.integer("LLM_BREAKER_FAILURES"),
        breaker_cooldown_s=r.number("LLM_BREAKER_COOLDOWN_S"),
        breaker_error_rate=r.number("LLM_BREAKER_ERROR_RATE"),
        breaker_window_s=r.number("LLM_BREAKER_WINDOW_S"),
        breaker_min_calls=r.integer("LLM_BREAKER_MIN_CALLS"),
        max_attempts=r.integer("LLM_MAX_ATTEMPTS"),
        cache_ttl_s=r.number("LLM_CACHE_TTL_S"),
        cache_max_entries=r.integer("LLM_CACHE_MAX_ENTRIES"),
        quota_backend=r.choice("LLM_QUOTA_BACKEND"),  # type: ignore[arg-type]
        quota_sqlite_path=str(r.text("LLM_QUOTA_SQLITE_PATH")),
        quota_heartbeat_s=r.number("LLM_QUOTA_HEARTBEAT_S"),
    )
    _check_lock_budget(llm)
    return llm


def _deployments(r: SettingsReader) -> dict[Stage, tuple[str, ...]]:
    """A model per stage (e.g. a small one for intent and critic), each with its own fallbacks
    when ``LLM_FALLBACK_DEPLOYMENTS_<STAGE>`` is set, else the shared list; duplicates dropped."""
    default = str(r.text("LLM_DEPLOYMENT"))
    fallbacks = r.list("LLM_FALLBACK_DEPLOYMENTS")
    return {
        stage: tuple(
            dict.fromkeys(
                (
                    r.text(f"LLM_DEPLOYMENT_{stage.name}") or default,
                    *(r.list(f"LLM_FALLBACK_DEPLOYMENTS_{stage.name}") or fallbacks),
                )
            )
        )
        for stage in Stage
    }


def _check_lock_budget(llm: LLMSettings) -> None:
    """A call holds a Service Bus message lock (lockDuration 60 s) while it waits for quota and
    then runs; both together must end well inside the lock."""
    if llm.wait_budget_s + llm.timeout_s > LLM_LOCK_BUDGET_S:
        raise ConfigError(
            "LLM_TIMEOUT_S",
            f"LLM_WAIT_BUDGET_S + LLM_TIMEOUT_S is {llm.wait_budget_s + llm.timeout_s:g}s; "
            f"keep it at most {LLM_LOCK_BUDGET_S:g}s, under the 60 s message lock",
        )


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
