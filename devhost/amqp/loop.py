"""The AMQP server's I/O loop: sockets, Proton transports and the event collector.

Proton's engine (``Transport``, ``Connection``, ``Collector``) does the protocol; this loop
owns the sockets, so every outgoing byte passes through :class:`FramePadder` on its way out,
and it runs the handler's periodic work between events. One thread runs it; ``call_soon`` and
``stop`` are the only methods other threads may call.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proton import Collector, Connection, Transport

from devhost.amqp.frames import FrameError, FramePadder

logger = logging.getLogger(__name__)

_READ_CHUNK = 65536


@dataclass
class _Client:
    sock: socket.socket
    transport: Transport
    connection: Connection
    padder: FramePadder = field(default_factory=FramePadder)
    outbox: bytearray = field(default_factory=bytearray)
    head_closed: bool = False
    tail_closed: bool = False


class Loop:
    """Listen on ``host:port`` (0: any free port) and serve until :meth:`stop`."""

    def __init__(
        self,
        handler: Any,  # Proton event methods, plus accepted(transport, connection) and tick()
        host: str,
        port: int,
        *,
        tick_interval_s: float,
    ) -> None:
        self.handler = handler
        self.collector = Collector()
        self.tick_interval_s = tick_interval_s
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
            self.listener.listen(128)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._clients: dict[int, _Client] = {}
        self._stopping = threading.Event()

    # -- other threads -------------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._calls.put(callback)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval_s
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                deadline = next_tick
                for client in self._clients.values():
                    wanted = client.transport.tick(time.time())
                    if wanted:
                        deadline = min(deadline, now + max(0.0, wanted - time.time()))
                self._dispatch()
                self._flush()
                readers: list[Any] = [self.listener, self._wake_r]
                writers: list[Any] = []
                for client in self._clients.values():
                    if not client.tail_closed and client.transport.capacity() > 0:
                        readers.append(client.sock)
                    if client.outbox:
                        writers.append(client.sock)
                timeout = max(0.0, deadline - time.monotonic())
                readable, writable, _ = select.select(readers, writers, [], timeout)
                for sock in readable:
                    if sock is self.listener:
                        self._accept()
                    elif sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._read(self._clients[sock.fileno()])
                for sock in writable:
                    client_ = self._clients.get(sock.fileno())
                    if client_ is not None:
                        self._write(client_)
                while True:
                    try:
                        callback = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    callback()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_interval_s
                    try:
                        self.handler.tick()
                    except Exception:
                        logger.exception("AMQP server: periodic work failed")
                self._dispatch()
                self._flush()
                self._reap()
        finally:
            for client in list(self._clients.values()):
                self._drop(client)
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = Transport(Transport.SERVER)
        connection = Connection()
        connection.collect(self.collector)
        self.handler.accepted(transport, connection)
        transport.bind(connection)
        self._clients[sock.fileno()] = _Client(sock, transport, connection)

    def _read(self, client: _Client) -> None:
        capacity = client.transport.capacity()
        if capacity <= 0:
            return
        try:
            data = client.sock.recv(min(capacity, _READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            client.transport.push(data)
        else:
            client.tail_closed = True
            client.transport.close_tail()

    def _dispatch(self) -> None:
        while True:
            event = self.collector.peek()
            if event is None:
                return
            try:
                event.dispatch(self.handler)
            finally:
                self.collector.pop()

    def _flush(self) -> None:
        for client in list(self._clients.values()):
            pending = client.transport.pending()
            if pending > 0:
                data = client.transport.peek(pending) or b""
                client.transport.pop(len(data))
                try:
                    client.outbox += client.padder.feed(data)
                except FrameError:
                    logger.exception("AMQP server: unreadable outgoing frames; closing")
                    self._drop(client)
                    continue
            elif pending < 0:
                client.head_closed = True
            if client.outbox:
                self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            client.outbox.clear()
            client.head_closed = True
            client.transport.close_head()
            return
        del client.outbox[:sent]

    def _reap(self) -> None:
        for client in list(self._clients.values()):
            pending = client.transport.pending()
            if pending < 0:
                client.head_closed = True
            if client.tail_closed and pending <= 0 and not client.outbox:
                self._drop(client)
                continue
            if client.head_closed and not client.outbox:
                if client.tail_closed or client.transport.closed:
                    self._drop(client)
                else:
                    # Everything is sent: end our half and wait for the client to end its own.
                    with contextlib.suppress(OSError):
                        client.sock.shutdown(socket.SHUT_WR)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(Exception):
            client.transport.unbind()
        with contextlib.suppress(OSError):
            client.sock.close()
        self._dispatch()
