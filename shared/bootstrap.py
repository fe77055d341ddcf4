"""The composition root, the only one: builds every client lazily, once per process.

Triggers call ``await get_services()``; devhost and tests call ``configure(...)`` first to
override any dependency by keyword (a store, a publisher, a chat model, the settings).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.adapters.azure.keyvault import resolve_keyvault_reference
from shared.adapters.document_quota import StoreCustomerBudget, StoreQuotaLedger
from shared.adapters.local.customer_budget import SqliteCustomerBudget
from shared.adapters.local.quota_ledger import SqliteQuotaLedger
from shared.config import Settings
from shared.errors import ConfigError
from shared.llm.budget import CustomerBudget
from shared.llm.clock import Clock, SystemClock
from shared.llm.endpoint import ChatEndpoint
from shared.llm.guarded import GuardedChatModel
from shared.llm.ledger import ShareCoordinator
from shared.llm.limiter import QuotaLimiter
from shared.llm.metrics import LLMMetrics
from shared.ports import ChatModel, DocumentStore, Publisher
from shared.service.pipeline import Pipeline
from shared.telemetry import configure_telemetry


@dataclass
class Services:
    settings: Settings
    store: DocumentStore
    publisher: Publisher
    llm: ChatModel
    pipeline: Pipeline

    async def close(self) -> None:
        for closer in (self.llm.close, self.publisher.close, self.store.close):
            await closer()


_overrides: dict[str, Any] = {}
_services: Services | None = None
_lock: asyncio.Lock | None = None


def configure(**overrides: Any) -> None:
    """Replace dependencies by name (``settings``, ``env``, ``store``, ``publisher``, ``llm``).

    Takes effect on the next ``get_services()``; previously built services are dropped.
    """
    unknown = set(overrides) - {"settings", "env", "store", "publisher", "llm"}
    if unknown:
        raise TypeError(f"unknown dependencies: {sorted(unknown)}")
    global _services, _lock
    _overrides.clear()
    _overrides.update(overrides)
    _services = None
    _lock = None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with Key Vault references resolved outside Azure."""
    return Settings.from_env(
        os.environ if env is None else env, resolve_secret=resolve_keyvault_reference
    )


async def get_services() -> Services:
    """The process's services, built on first use."""
    global _services, _lock
    if _services is not None:
        return _services
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _services is None:
            _services = _build()
    return _services


async def shutdown() -> None:
    global _services
    if _services is not None:
        services, _services = _services, None
        await services.close()


def _build() -> Services:
    settings: Settings = _overrides.get("settings") or load_settings(_overrides.get("env"))
    configure_telemetry(settings)
    store: DocumentStore = _overrides.get("store") or build_store(settings)
    publisher: Publisher = _overrides.get("publisher") or build_publisher(settings)
    llm: ChatModel = _overrides.get("llm") or build_chat_model(settings, store)
    pipeline = Pipeline(settings=settings, store=store, publisher=publisher, llm=llm)
    return Services(settings, store, publisher, llm, pipeline)


def build_store(settings: Settings) -> DocumentStore:
    if settings.store_backend == "sqlite":
        from shared.adapters.local.sqlite_store import SqliteDocumentStore

        return SqliteDocumentStore(
            settings.sqlite_path, partition_keys=settings.container_partition_keys
        )
    from shared.adapters.azure.cosmos_store import CosmosDocumentStore

    return CosmosDocumentStore.from_settings(settings)


def build_publisher(settings: Settings) -> Publisher:
    """Service Bus by ``ServiceBusConnection``: a connection string, or an identity on
    ``ServiceBusConnection__fullyQualifiedNamespace`` (``ConfigError`` when neither is set)."""
    from shared.adapters.azure.servicebus_publisher import ServiceBusPublisher

    return ServiceBusPublisher.from_settings(settings)


def build_chat_model(
    settings: Settings,
    store: DocumentStore | None = None,
    *,
    endpoint: ChatEndpoint | None = None,
    metrics: LLMMetrics | None = None,
    clock: Clock | None = None,
) -> GuardedChatModel:
    """The process's ``ChatModel`` from settings; nothing connects until the first call.

    ``LLM_QUOTA_BACKEND`` picks how instances share quota: ``local`` (one instance has it all),
    ``sqlite`` (devhost workers share ``LLM_QUOTA_SQLITE_PATH``) or ``store`` (the ``quota``
    container of ``store``, i.e. Cosmos DB in Azure). The customer budget, when set, is kept in
    the same place (the store when there is one, else the SQLite file).
    """
    llm = settings.llm
    if endpoint is None:
        from shared.adapters.azure.openai_chat import OpenAIChatEndpoint

        endpoint = OpenAIChatEndpoint(llm)
    if metrics is None:
        from shared.telemetry import LLMTelemetry

        metrics = LLMTelemetry()
    clock = clock or SystemClock()
    limiter = QuotaLimiter(llm.deployment_tpm)
    shares: ShareCoordinator | None = None
    if llm.quota_backend == "sqlite":
        shares = ShareCoordinator(
            SqliteQuotaLedger(llm.quota_sqlite_path),
            limiter,
            heartbeat_s=llm.quota_heartbeat_s,
            clock=clock,
        )
    elif llm.quota_backend == "store":
        if store is None:
            raise ConfigError("LLM_QUOTA_BACKEND", "'store' needs a document store")
        shares = ShareCoordinator(
            StoreQuotaLedger(store, container=settings.quota_container),
            limiter,
            heartbeat_s=llm.quota_heartbeat_s,
            clock=clock,
        )
    budget: CustomerBudget | None = None
    if llm.customer_daily_token_budget is not None:
        limit = llm.customer_daily_token_budget
        budget = (
            StoreCustomerBudget(store, limit=limit, container=settings.quota_container)
            if store is not None and llm.quota_backend != "sqlite"
            else SqliteCustomerBudget(llm.quota_sqlite_path, limit=limit)
        )
    return GuardedChatModel(
        endpoint,
        settings=llm,
        limiter=limiter,
        budget=budget,
        shares=shares,
        clock=clock,
        metrics=metrics,
    )
