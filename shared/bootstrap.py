"""The composition root: builds every client lazily, once per process.

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
from shared.config import Settings
from shared.errors import ConfigError
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
    if not settings.servicebus_namespace:
        raise ConfigError("ServiceBusConnection__fullyQualifiedNamespace", "missing")
    from shared.adapters.azure.servicebus_publisher import ServiceBusPublisher

    return ServiceBusPublisher.from_settings(settings)


def build_chat_model(settings: Settings, store: DocumentStore) -> ChatModel:
    from shared.llm import build_chat_model as build
    from shared.telemetry import LLMTelemetry

    return build(settings, store=store, metrics=LLMTelemetry())
