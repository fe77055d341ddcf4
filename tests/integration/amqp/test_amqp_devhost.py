"""A running devhost (host, workers, simulator) fed through AMQP by the real SDKs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient

from devhost.amqp import AmqpConfig, AmqpServer
from devhost.host import Host, SimulatorOptions
from shared.bootstrap import load_settings
from tests.support.devhost_run import FINAL, request_lines, run_until_final, workdir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks workers"),
]


async def test_requests_sent_with_the_sdk_are_processed_by_devhost_functions(
    tmp_path: Path,
) -> None:
    """Events an EventHubProducerClient sends over AMQP are ingested by devhost's own workers
    (the same broker file) and each conversation, holding its request's text, reaches a final
    state."""
    async with Host(
        workdir(tmp_path), simulator=SimulatorOptions(latency_ms=20), http_port=0
    ) as host:
        assert host.broker is not None
        settings = load_settings(host.settings_env)
        server = AmqpServer(host.broker, AmqpConfig(port=0))
        server.start()
        try:
            lines = request_lines(3, prefix="amqp")
            async with EventHubProducerClient.from_connection_string(
                server.connection_string(), eventhub_name=settings.eventhub_name
            ) as producer:
                for line in lines:
                    key = json.loads(line)["customerId"]
                    await producer.send_batch([EventData(line)], partition_key=key)
            docs = await run_until_final(host, settings, len(lines), timeout_s=90)
        finally:
            server.stop()
    finals = [d for d in docs if d.get("status") in FINAL]
    assert len(finals) == len(lines)
    texts = {json.loads(line)["text"] for line in lines}
    assert all(texts & set(map(str, _values(doc))) for doc in finals), finals


def _values(doc: object) -> list[object]:
    """Every scalar in a stored document, nested values included."""
    if isinstance(doc, dict):
        return [v for value in doc.values() for v in _values(value)]
    if isinstance(doc, list):
        return [v for value in doc for v in _values(value)]
    return [doc]
