"""Cross-process wake-ups for the devhost broker: one unix datagram socket per waiting receiver.

A receiver that is about to sleep binds a *bell*, a unix datagram socket named
``<channel>.<pid>.<n>.sock`` in the broker's bell directory. A sender, after its transaction has
committed, sends one byte to every bell of the channel. The byte only says "look again"; the
database stays the single source of truth, so a lost, duplicated or late ring costs latency,
never correctness, and the broker's timed polling still works when bells cannot be used at all.

Why datagrams on the filesystem: any process can find the current receivers with one directory
listing, a send to a socket nobody listens on fails at once with ``ECONNREFUSED`` (the file of a
killed process is then removed), and the kernel buffers a ring that arrives while the receiver is
busy, so it cannot be missed between "the queue was empty" and "now I sleep".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

BELL_SUFFIX = ".sock"
# ``sun_path`` holds 108 bytes on Linux (104 on macOS) including the terminating NUL.
_MAX_SOCKET_PATH = 100
# The longest file name a bell can get: channel token, pid, counter and suffix.
_MAX_BELL_NAME = 64
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
_RING = b"\x01"
_bell_counter = itertools.count()


def bell_directory(broker_dir: Path) -> Path:
    """Return the directory holding the bells of the broker whose database lives in ``broker_dir``.

    That is ``<broker_dir>/bells`` unless the resulting socket paths would be too long for a unix
    socket address; then a short per-broker directory under the system temp directory, named by
    a digest of the absolute broker directory, so every process of one broker picks the same one.
    """
    absolute = broker_dir.resolve()
    preferred = absolute / "bells"
    if len(os.fsencode(preferred)) + 1 + _MAX_BELL_NAME <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"switchboard-bells-{digest}"


def channel_token(kind: str, name: str) -> str:
    """Return the file-name-safe token of a channel (a queue or a hub) for bell names.

    Names made of letters, digits, ``-`` and ``_`` are kept readable; any other name (dots,
    slashes, long names) is replaced by a digest so it can neither escape the directory nor be
    confused with another channel's bells.
    """
    if not re.fullmatch(r"[a-z]{1,3}", kind):
        raise ValueError(f"bell kind must be 1-3 lowercase letters, got {kind!r}")
    if _SAFE_NAME.fullmatch(name):
        return f"{kind}-{name}"
    return f"{kind}-x{hashlib.sha256(name.encode('utf-8')).hexdigest()[:24]}"


def ring(directory: Path, token: str) -> int:
    """Send one wake-up byte to every bell of channel ``token``; return how many were rung.

    Never raises for a missing or stale bell: a socket file whose owner is gone is removed, and a
    bell whose buffer is full already has a ring pending.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    except OSError as error:
        logger.debug("cannot list bell directory %s: %s", directory, error)
        return 0
    prefix = token + "."
    rung = 0
    sender: socket.socket | None = None
    try:
        for name in names:
            if not (name.startswith(prefix) and name.endswith(BELL_SUFFIX)):
                continue
            pid, _, counter = name[len(prefix) : -len(BELL_SUFFIX)].partition(".")
            if not (pid.isdigit() and counter.isdigit()):
                continue  # another channel whose token merely shares this prefix
            if sender is None:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
            path = os.path.join(directory, name)
            try:
                sender.sendto(_RING, path)
                rung += 1
            except BlockingIOError:
                rung += 1  # the receiver's buffer is full: it has rings it has not read yet
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody is bound to this file any more: its process died without cleaning up.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError as error:
                logger.debug("cannot ring bell %s: %s", name, error)
    finally:
        if sender is not None:
            sender.close()
    return rung


class Doorbell:
    """One bound bell that any number of coroutines of one event loop can wait on.

    Owned by one thread of one process (the broker keeps one per queue and thread); a ring
    wakes every coroutine waiting at that moment, and a ring that arrives while nobody waits
    stays buffered in the socket until the next :meth:`drain` or :meth:`wait`.
    """

    def __init__(self, directory: Path, token: str) -> None:
        self._pid = os.getpid()
        self.path = directory / f"{token}.{self._pid}.{next(_bell_counter)}{BELL_SUFFIX}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._bind(directory)
        except BaseException:
            self._sock.close()
            raise
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _bind(self, directory: Path) -> None:
        for attempt in range(3):
            _ensure_private_directory(directory)
            with contextlib.suppress(FileNotFoundError):
                # Left behind by a dead process that had the same pid.
                os.unlink(self.path)
            try:
                self._sock.bind(os.fspath(self.path))
                return
            except FileNotFoundError:
                # Another process removed the then-empty directory on shutdown; make it again.
                if attempt == 2:
                    raise

    def drain(self) -> bool:
        """Consume every pending ring; return whether there was any."""
        rung = False
        while True:
            try:
                self._sock.recv(64)
                rung = True
            except (BlockingIOError, InterruptedError):
                return rung

    async def wait(self, timeout_s: float) -> bool:
        """Sleep until the bell rings or ``timeout_s`` passes; return whether it rang.

        A ring buffered since the last drain returns at once.
        """
        if self._closed:
            raise RuntimeError("doorbell is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._waiters:
                raise RuntimeError("a doorbell serves one event loop at a time")
            self._loop = loop
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            loop.add_reader(self._sock.fileno(), self._on_readable)
        self._waiters.add(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
            return bool(done)
        finally:
            waiter.cancel()
            self._waiters.discard(waiter)
            if not self._waiters and not self._closed:
                loop.remove_reader(self._sock.fileno())

    def _on_readable(self) -> None:
        self.drain()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Stop listening and remove the socket file (only in the process that bound it)."""
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiters:
            waiter.cancel()
        if self._loop is not None and self._waiters and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if os.getpid() == self._pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _ensure_private_directory(directory: Path) -> None:
    """Create ``directory`` for this user only; refuse one that another user owns."""
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "bell directory is not a directory", str(directory)
            ) from None
        if info.st_uid != os.getuid():
            raise PermissionError(
                errno.EPERM, "bell directory belongs to another user", str(directory)
            ) from None
