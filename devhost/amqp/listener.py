"""The AMQP listener: the Proton loop in a thread, serving Service Bus and Event Hubs links.

It composes :class:`~devhost.amqp.server.ServerHandler` with the two dialects, which build on
the handler themselves; being above all three, it keeps them free of an import cycle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from devhost.amqp.eventhubs import EventHubsProtocol
from devhost.amqp.loop import Loop
from devhost.amqp.server import AmqpConfig, ServerHandler
from devhost.amqp.servicebus import ServiceBusProtocol
from devhost.broker import Broker

logger = logging.getLogger(__name__)


class AmqpServer:
    """The AMQP listener: a Proton reactor in a daemon thread over one :class:`Broker`.

    ``start()`` returns once the socket listens (or raises why it cannot); ``stop()`` closes
    the listener and every connection. The broker is shared, not owned: close it yourself.
    """

    def __init__(self, broker: Broker, config: AmqpConfig | None = None) -> None:
        self.config = config or AmqpConfig()
        self.broker = broker
        self.handler = ServerHandler(
            broker, self.config, [ServiceBusProtocol(), EventHubsProtocol()]
        )
        self._thread: threading.Thread | None = None
        self._loop: Loop | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"sb://{self.config.host}:{self.port}"

    def connection_string(self, *, entity: str | None = None) -> str:
        """The emulator connection string the Azure SDKs take for this server."""
        name, key = self.config.keys[0]
        text = (
            f"Endpoint={self.endpoint};SharedAccessKeyName={name};SharedAccessKey={key};"
            "UseDevelopmentEmulator=true"
        )
        return text + (f";EntityPath={entity}" if entity else "")

    def start(self) -> None:
        """Listen (raises ``OSError`` naming the address when it cannot) and serve in a
        daemon thread."""
        if self._thread is not None:
            raise RuntimeError("the AMQP server is already started")
        try:
            loop = Loop(
                self.handler,
                self.config.host,
                self.config.port,
                tick_interval_s=self.config.poll_interval_s,
            )
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot listen for AMQP on {self.config.host}:{self.config.port}: {error}",
            ) from error
        self._loop, self._port = loop, loop.port
        self._thread = threading.Thread(target=self._run, name="devhost-amqp", daemon=True)
        self._thread.start()
        logger.info("AMQP listening on %s:%d", self.config.host, self.port)

    def _run(self) -> None:
        assert self._loop is not None
        try:
            self._loop.run()
        except BaseException:
            logger.exception("AMQP server stopped on an error")

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the server's thread (safe from any thread)."""
        if self._loop is not None:
            self._loop.call_soon(callback)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None or self._loop is None:
            return
        self._loop.stop()
        thread.join()

    def __enter__(self) -> AmqpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
