"""Settings: defaults, identity-based connections, Key Vault references, clear failures."""

from __future__ import annotations

import pytest

from shared.adapters.azure.keyvault import parse_reference
from shared.config import Settings
from shared.domain.messages import Stage
from shared.errors import ConfigError

BASE = {"AZURE_OPENAI_ENDPOINT": "https://example-openai.openai.azure.com"}


def test_defaults_name_the_resources_infra_creates() -> None:
    settings = Settings.from_env(BASE)
    assert settings.queues.all() == ("intent", "response", "critic", "escalation", "deadletter")
    assert settings.llm.api_key is None  # managed identity in Azure
    assert settings.llm.deployments_for(Stage.INTENT) == ("gpt-4o-mini",)


def test_a_model_per_stage_with_fallbacks_in_order() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "LLM_DEPLOYMENT_RESPONSE": "gpt-4o",
            "LLM_FALLBACK_DEPLOYMENTS": "gpt-4o-mini-eu, gpt-4o-mini-us",
            "LLM_PRICES": "gpt-4o=2.5/10,gpt-4o-mini=0.15/0.6",
        }
    )
    assert settings.llm.deployments_for(Stage.RESPONSE) == (
        "gpt-4o",
        "gpt-4o-mini-eu",
        "gpt-4o-mini-us",
    )
    assert settings.llm.deployments_for(Stage.CRITIC)[0] == "gpt-4o-mini"
    assert settings.llm.prices_per_million["gpt-4o"] == (2.5, 10.0)


@pytest.mark.parametrize(
    ("env", "setting", "problem"),
    [
        ({}, "AZURE_OPENAI_ENDPOINT", "missing"),
        ({**BASE, "MAX_REVISIONS": "many"}, "MAX_REVISIONS", "not an integer"),
        ({**BASE, "MAX_REVISIONS": "50"}, "MAX_REVISIONS", "outside"),
        ({**BASE, "STORE_BACKEND": "mongo"}, "STORE_BACKEND", "not one of"),
        ({**BASE, "STORE_BACKEND": "cosmos"}, "CosmosConnection__accountEndpoint", "missing"),
        ({**BASE, "QUEUE_INTENT": "bad name!"}, "QUEUE_INTENT", "not a valid resource name"),
        ({**BASE, "LLM_TIMEOUT_S": "nan"}, "LLM_TIMEOUT_S", "outside"),
        ({**BASE, "LLM_DEPLOYMENT_TPM": "gpt-4o"}, "LLM_DEPLOYMENT_TPM", "name=value"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}, "AZURE_OPENAI_API_KEY", "required"),
        ({"AZURE_OPENAI_ENDPOINT": "ftp://x"}, "AZURE_OPENAI_ENDPOINT", "http(s) URL"),
    ],
)
def test_a_bad_setting_fails_naming_the_setting(
    env: dict[str, str], setting: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert problem in str(caught.value)


def test_a_key_vault_reference_is_resolved_outside_azure() -> None:
    seen: list[tuple[str, str]] = []

    def resolver(setting: str, body: str) -> str:
        seen.append((setting, body))
        return "resolved-value"

    settings = Settings.from_env(
        {
            **BASE,
            "AZURE_OPENAI_API_KEY": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/aoai/1)",
        },
        resolve_secret=resolver,
    )
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.reveal() == "resolved-value"
    assert "resolved-value" not in repr(settings)
    assert seen == [("AZURE_OPENAI_API_KEY", "SecretUri=https://kv.vault.azure.net/secrets/aoai/1")]


def test_an_unresolved_reference_inside_azure_stops_start_up() -> None:
    env = {
        **BASE,
        "WEBSITE_SITE_NAME": "switchboard-func",
        "AZURE_OPENAI_API_KEY": "@Microsoft.KeyVault(VaultName=kv;SecretName=aoai)",
    }
    with pytest.raises(ConfigError, match="unresolved Key Vault reference") as caught:
        Settings.from_env(env, resolve_secret=lambda s, b: "never used")
    assert caught.value.setting == "AZURE_OPENAI_API_KEY"


def test_a_reference_that_cannot_be_resolved_is_a_clear_error() -> None:
    def failing(setting: str, body: str) -> str:
        raise PermissionError("denied")

    with pytest.raises(ConfigError, match="could not be resolved"):
        Settings.from_env(
            {**BASE, "AZURE_OPENAI_API_KEY": "@Microsoft.KeyVault(VaultName=kv;SecretName=a)"},
            resolve_secret=failing,
        )


def test_both_reference_syntaxes_parse() -> None:
    assert parse_reference("K", "SecretUri=https://kv.vault.azure.net/secrets/name/abc") == (
        "https://kv.vault.azure.net",
        "name",
        "abc",
    )
    assert parse_reference("K", "VaultName=kv; SecretName=name") == (
        "https://kv.vault.azure.net",
        "name",
        None,
    )
    with pytest.raises(ConfigError):
        parse_reference("K", "SecretUri=http://insecure/secrets/x")
