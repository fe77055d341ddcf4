"""AMQP 1.0 for devhost: the Azure Service Bus and Event Hubs SDKs against the local broker.

``AmqpServer(broker, AmqpConfig(port=5672)).start()`` serves the broker's queues and event hubs
on loopback; ``connection_string()`` is what the SDKs take
(``Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=...;SharedAccessKey=...;
UseDevelopmentEmulator=true``). See docs/amqp.md.
"""

from devhost.amqp.listener import AmqpServer
from devhost.amqp.server import (
    DEFAULT_PORT,
    EMULATOR_KEY,
    EMULATOR_KEY_NAME,
    AmqpConfig,
)

__all__ = ["DEFAULT_PORT", "EMULATOR_KEY", "EMULATOR_KEY_NAME", "AmqpConfig", "AmqpServer"]
