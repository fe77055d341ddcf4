"""Resolving ``@Microsoft.KeyVault(...)`` references outside Azure (in Azure the platform does)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from shared.errors import ConfigError

_PAIR = re.compile(r"\s*(\w+)\s*=\s*([^;]*)\s*;?")


def parse_reference(setting: str, body: str) -> tuple[str, str, str | None]:
    """(vault URL, secret name, version or None) from either reference syntax."""
    fields = {k.lower(): v.strip() for k, v in _PAIR.findall(body)}
    if "secreturi" in fields:
        uri = urlparse(fields["secreturi"])
        parts = [p for p in uri.path.split("/") if p]
        if uri.scheme != "https" or not uri.netloc or len(parts) < 2 or parts[0] != "secrets":
            raise ConfigError(
                setting, "Key Vault SecretUri must be https://<vault>/secrets/<name>[/<version>]"
            )
        return f"https://{uri.netloc}", parts[1], parts[2] if len(parts) > 2 else None
    if "vaultname" in fields and "secretname" in fields:
        vault = fields["vaultname"]
        return (
            f"https://{vault}.vault.azure.net",
            fields["secretname"],
            fields.get("secretversion") or None,
        )
    raise ConfigError(
        setting, "Key Vault reference needs SecretUri=... or VaultName=...;SecretName=..."
    )


def resolve_keyvault_reference(setting: str, body: str) -> str:
    """Fetch the secret with ``DefaultAzureCredential`` (developer sign-in or managed identity)."""
    vault_url, name, version = parse_reference(setting, body)
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    credential = DefaultAzureCredential()
    try:
        with SecretClient(vault_url=vault_url, credential=credential) as client:
            value = client.get_secret(name, version).value
    finally:
        credential.close()
    if value is None:
        raise ConfigError(setting, f"Key Vault secret {name!r} has no value")
    return value
