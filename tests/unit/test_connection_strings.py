"""Service Bus and Event Hubs connection strings in settings, parsed by the SDKs' own parsers.

The rule is the Functions extensions': a connection's setting named exactly after it holds a
connection string and wins over its identity settings (Azure Service Bus trigger for Azure
Functions, "Connections": https://learn.microsoft.com/azure/azure-functions/
functions-bindings-service-bus-trigger#connections). The string is a secret: no error shows it.
"""

from __future__ import annotations

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.eventhub import EventHubProducerClient
from azure.servicebus import ServiceBusClient

from shared.adapters.azure.connection_strings import servicebus_connection
from shared.adapters.azure.eventhub_producer import EventHubRequestProducer, eventhub_connection
from shared.adapters.azure.servicebus_publisher import ServiceBusPublisher
from shared.config import Secret, Settings
from shared.errors import ConfigError

KEY = "c2VjcmV0LWtleS12YWx1ZQ=="
EMULATOR = (
    f"Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=Root;SharedAccessKey={KEY};"
    "UseDevelopmentEmulator=true"
)
CLOUD = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={KEY}"


def test_an_emulator_string_is_plain_amqp_to_its_host_and_port_with_the_key() -> None:
    connection = servicebus_connection("ServiceBusConnection", Secret(EMULATOR))
    assert (connection.namespace, connection.use_tls, connection.entity) == (
        "127.0.0.1:5672",
        False,
        None,
    )
    assert isinstance(connection.credential, AzureNamedKeyCredential)
    assert connection.credential.named_key == ("Root", KEY)
    assert KEY not in repr(connection)


def test_a_namespace_string_keeps_tls_and_a_sas_string_gives_a_sas_credential() -> None:
    assert servicebus_connection("ServiceBusConnection", Secret(CLOUD)).use_tls is True
    sas = eventhub_connection(
        "EventHubConnection",
        Secret(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature "
            "sr=x&sig=y&se=4102444800&skn=Root;EntityPath=requests"
        ),
    )
    assert isinstance(sas.credential, AzureSasCredential)
    assert (sas.use_tls, sas.entity) == (True, "requests")


@pytest.mark.parametrize(
    "text",
    [
        "not a connection string",
        f"SharedAccessKeyName=Root;SharedAccessKey={KEY}",  # no endpoint
        "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=Root",  # no key
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey={KEY}",  # no key name
    ],
)
def test_a_bad_string_is_refused_by_setting_name_without_its_value(text: str) -> None:
    for parse, setting in (
        (servicebus_connection, "ServiceBusConnection"),
        (eventhub_connection, "EventHubConnection"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse(setting, Secret(text))
        assert caught.value.setting == setting
        assert KEY not in str(caught.value)
        assert text not in str(caught.value)


def test_the_emulator_flag_is_honoured_only_for_a_loopback_endpoint() -> None:
    """Plain AMQP carries the key in clear: an emulator string to another host is refused."""
    remote = EMULATOR.replace("127.0.0.1", "devbox.example.com")
    with pytest.raises(ConfigError, match="loopback"):
        servicebus_connection("ServiceBusConnection", Secret(remote))
    for host in ("localhost", "[::1]", "127.0.0.2"):
        local = EMULATOR.replace("127.0.0.1", host)
        assert servicebus_connection("ServiceBusConnection", Secret(local)).use_tls is False


def test_the_emulator_flag_is_read_as_the_sdks_read_it() -> None:
    """The SDKs' own ``from_connection_string`` is the oracle: for ``UseDevelopmentEmulator=true``
    both clients drop TLS and keep the port, as the parsed connection does; for ``True`` they
    keep TLS (to a server that has none), so that spelling is refused rather than followed."""
    sdk = ServiceBusClient.from_connection_string(EMULATOR)
    hub = EventHubProducerClient.from_connection_string(f"{EMULATOR};EntityPath=requests")
    ours = servicebus_connection("ServiceBusConnection", Secret(EMULATOR))
    # The SDKs expose the transport choice only on their private config.
    assert (sdk._config.use_tls, hub._config.use_tls, ours.use_tls) == (False, False, False)
    assert sdk.fully_qualified_namespace == ours.namespace
    upper = EMULATOR.replace("=true", "=True")
    assert ServiceBusClient.from_connection_string(upper)._config.use_tls is True
    scoped = f"{upper};EntityPath=requests"
    assert EventHubProducerClient.from_connection_string(scoped)._config.use_tls is True
    with pytest.raises(ConfigError, match="lower case"):
        servicebus_connection("ServiceBusConnection", Secret(upper))


def _settings(**values: str) -> Settings:
    return Settings.from_env({"AZURE_OPENAI_ENDPOINT": "https://unused.openai.azure.com", **values})


def test_settings_read_the_exact_settings_as_secrets() -> None:
    settings = _settings(ServiceBusConnection=EMULATOR, EventHubConnection=CLOUD)
    assert settings.servicebus_connection_string == Secret(EMULATOR)
    assert settings.eventhub_connection_string == Secret(CLOUD)
    assert KEY not in repr(settings)


async def test_the_connection_string_wins_over_the_identity_settings() -> None:
    settings = _settings(
        ServiceBusConnection=EMULATOR,
        ServiceBusConnection__fullyQualifiedNamespace="ns.servicebus.windows.net",
    )
    publisher = ServiceBusPublisher.from_settings(settings)
    try:
        client = await publisher._client.get()  # the SDK's client; it connects on first send
        assert client.fully_qualified_namespace == "127.0.0.1:5672"
        assert client._config.use_tls is False
    finally:
        await publisher.close()


def test_a_namespace_string_is_required_for_the_publisher() -> None:
    scoped = _settings(ServiceBusConnection=f"{EMULATOR};EntityPath=intent")
    with pytest.raises(ConfigError, match="EntityPath") as caught:
        ServiceBusPublisher.from_settings(scoped)
    assert caught.value.setting == "ServiceBusConnection"


def test_without_either_form_the_missing_setting_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        EventHubRequestProducer.from_settings(_settings())
    assert caught.value.setting == "EventHubConnection__fullyQualifiedNamespace"
    assert "EventHubConnection to a connection string" in caught.value.problem
