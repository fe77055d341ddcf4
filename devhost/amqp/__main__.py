"""``python -m devhost.amqp``: serve a devhost workdir's broker over AMQP on loopback.

Run it beside ``devhost run`` (which declares the queues and hubs and runs the workers): both
open the same ``broker.sqlite3``, so what an SDK sends here the workers process, and what the
workers send an SDK receives. Settings: ``DEVHOST_AMQP_PORT`` (default 5672),
``DEVHOST_AMQP_KEY_NAME`` and ``DEVHOST_AMQP_KEY`` (default: the emulators' well-known
``RootManageSharedAccessKey`` / ``SAS_KEY_VALUE``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from devhost.amqp.listener import AmqpServer
from devhost.amqp.server import (
    DEFAULT_PORT,
    EMULATOR_KEY,
    EMULATOR_KEY_NAME,
    AmqpConfig,
)
from devhost.broker import Broker
from devhost.environment import Workdir
from devhost.settings import DevhostSettings
from shared.errors import ConfigError


def config_from_env(environ: Mapping[str, str], *, port: int | None = None) -> AmqpConfig:
    """The server settings of ``DEVHOST_AMQP_*``; ``ValueError`` names a bad one."""
    try:
        settings = DevhostSettings.from_env(environ)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    if port is None and settings.amqp_off:
        raise ValueError("setting DEVHOST_AMQP_PORT: off; the AMQP server needs a port")
    chosen = port if port is not None else settings.amqp_port
    if chosen is not None and not 0 <= chosen <= 65535:
        raise ValueError(f"--port must be 0-65535, got {chosen}")
    name = settings.amqp_key_name or EMULATOR_KEY_NAME
    key = settings.amqp_key.reveal() if settings.amqp_key is not None else EMULATOR_KEY
    return AmqpConfig(port=DEFAULT_PORT if chosen is None else chosen, keys=((name, key),))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost.amqp", description=__doc__)
    parser.add_argument("--workdir", default=".devhost", help="devhost's folder (.devhost)")
    parser.add_argument("--port", type=int, default=None, help="overrides DEVHOST_AMQP_PORT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = config_from_env(os.environ, port=args.port)
    except ValueError as error:
        parser.error(str(error))
    broker_path = Workdir(Path(args.workdir)).broker
    if not broker_path.exists():
        parser.error(f"{broker_path} does not exist: start `python -m devhost run` first")
    broker = Broker(broker_path)
    server = AmqpServer(broker, config)
    try:
        server.start()
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    print(server.connection_string(), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
