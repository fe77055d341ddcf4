"""Service Bus and Event Hubs connection strings, read the way the Functions extensions read them.

A connection named ``ServiceBusConnection`` is either an identity (``ServiceBusConnection__
fullyQualifiedNamespace``, ``__clientId``) or a connection string in the setting named exactly
``ServiceBusConnection``; when both are set the exact setting wins ("Azure Service Bus trigger
for Azure Functions — Connections", https://learn.microsoft.com/azure/azure-functions/
functions-bindings-service-bus-trigger#connections). The string is parsed by the SDK's own
``parse_connection_string``; what it yields is what the SDK's ``from_connection_string`` hands
its client: the namespace host, a key (or SAS) credential, and plain AMQP for an emulator string
(``UseDevelopmentEmulator=true``), which is allowed to a loopback address only — it carries the
key in clear. A bad string is a ``ConfigError`` naming the setting, never showing the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.servicebus import parse_connection_string

from shared.config import Secret
from shared.errors import ConfigError

EMULATOR_FLAG = "UseDevelopmentEmulator"


class _Parsed(Protocol):
    """What both SDKs' ``parse_connection_string`` return, as far as it is read here."""

    @property
    def fully_qualified_namespace(self) -> str: ...
    @property
    def shared_access_key_name(self) -> str | None: ...
    @property
    def shared_access_key(self) -> str | None: ...
    @property
    def shared_access_signature(self) -> str | None: ...


@dataclass(frozen=True)
class SasConnection:
    """Where and how an SDK client connects, from a connection string."""

    namespace: str
    """The host, with its port when the string names one (a local emulator's)."""
    credential: AzureNamedKeyCredential | AzureSasCredential
    use_tls: bool
    entity: str | None
    """``EntityPath``: the one queue, topic or event hub the string is scoped to, if any."""

    def __repr__(self) -> str:
        return f"SasConnection(namespace={self.namespace!r}, use_tls={self.use_tls})"


def servicebus_connection(setting: str, value: Secret) -> SasConnection:
    """A Service Bus connection string, parsed by ``azure.servicebus``."""

    def entity(parsed: Any) -> str | None:
        return parsed.entity_path  # type: ignore[no-any-return]

    return parse_connection(setting, value, parse_connection_string, entity)


def parse_connection(
    setting: str,
    value: Secret,
    parse: Callable[[str], Any],
    entity_of: Callable[[Any], str | None],
) -> SasConnection:
    """``value`` parsed by an SDK's ``parse_connection_string`` (``parse``); ``entity_of`` reads
    its ``EntityPath``. The Event Hubs parser is passed in by the producer, which alone imports
    ``azure-eventhub``: the Function App ships ``azure-servicebus`` but not that package."""
    text = value.reveal()
    try:
        parsed: _Parsed = parse(text)
    except ValueError as exc:
        raise ConfigError(
            setting, f"is not a valid connection string ({_reason(exc, text)})"
        ) from None
    emulator = _emulator(setting, text)
    if emulator and not _is_loopback(parsed.fully_qualified_namespace):
        raise ConfigError(
            setting,
            f"has {EMULATOR_FLAG}=true, which connects over plain AMQP with the key in clear; "
            "its Endpoint must be a loopback address (127.0.0.1, ::1 or localhost)",
        )
    credential: AzureNamedKeyCredential | AzureSasCredential
    if parsed.shared_access_signature:
        credential = AzureSasCredential(parsed.shared_access_signature)
    else:
        credential = AzureNamedKeyCredential(
            parsed.shared_access_key_name or "", parsed.shared_access_key or ""
        )
    return SasConnection(
        namespace=parsed.fully_qualified_namespace,
        credential=credential,
        use_tls=not emulator,
        entity=entity_of(parsed) or None,
    )


def _emulator(setting: str, text: str) -> bool:
    """``UseDevelopmentEmulator``: the SDKs switch TLS off only for the exact value ``true``, so
    any other spelling of it is refused rather than silently meaning ``false``."""
    for part in text.split(";"):
        key, _, flag = part.partition("=")
        if key.strip().lower() == EMULATOR_FLAG.lower():
            if flag.strip() == "true":
                return True
            if flag.strip() == "false":
                return False
            raise ConfigError(setting, f"{EMULATOR_FLAG} must be 'true' or 'false' (lower case)")
    return False


def _is_loopback(namespace: str) -> bool:
    try:
        host = urlsplit(f"sb://{namespace}").hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: ValueError, text: str) -> str:
    """The SDK's reason, unless it quotes any part of the string (which may hold the key)."""
    reason = str(exc)
    parts = [p.partition("=")[2] for p in text.split(";")]
    if any(len(part) >= 4 and part in reason for part in parts):
        return "malformed"
    return reason
