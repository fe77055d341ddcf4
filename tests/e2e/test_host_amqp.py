"""devhost run serves AMQP over its own broker: the SDK's connection string, a port taken.

The connection string has the shape the Service Bus emulator documents for its clients
("Test locally by using the Azure Service Bus emulator", learn.microsoft.com,
service-bus-messaging/test-locally-with-service-bus-emulator:
``Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=...;
UseDevelopmentEmulator=true;``), and the oracle that it works is the real ``azure-servicebus``
client sending over it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from devhost.host import Host, HostError, SimulatorOptions
from tests.support.devhost_run import workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_the_host_serves_its_broker_over_amqp_to_the_service_bus_sdk(tmp_path: Path) -> None:
    async with Host(
        workdir(tmp_path), simulator=SimulatorOptions(tpm=1_000_000), http_port=0, amqp_port=0
    ) as host:
        assert host.amqp is not None
        assert host.broker is not None
        text = host.amqp.connection_string()
        assert "UseDevelopmentEmulator=true" in text
        # A message sent with the real SDK lands on the very broker the workers read.
        host.broker.ensure_queue("probe")
        with (
            ServiceBusClient.from_connection_string(text) as client,
            client.get_queue_sender("probe") as sender,
        ):
            sender.send_messages(ServiceBusMessage(b"hello", message_id="m-1"))
        (received,) = host.broker.receive("probe")
        assert (received.message_id, received.body) == ("m-1", b"hello")


async def test_a_taken_port_is_an_error_when_asked_for_and_a_warning_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HostError, match="AMQP"):
            async with Host(workdir(tmp_path / "a"), http_port=0, amqp_port=port):
                pass
        async with Host(
            workdir(tmp_path / "b"), http_port=0, amqp_port=port, amqp_required=False
        ) as host:
            assert host.amqp is None
        assert "AMQP not started" in caplog.text
