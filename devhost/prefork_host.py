"""The host's side of the worker template (``devhost.prefork``): starting the template process,
asking it to fork instances, and a :class:`ForkedWorker` per instance with the surface of an
``asyncio.subprocess.Process`` (``pid``, ``returncode``, ``send_signal``, ``kill``, ``wait``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from devhost.prefork import (
    CLOSE_TIMEOUT_S,
    FORK_TIMEOUT_S,
    READY_TIMEOUT_S,
)

log = logging.getLogger("devhost.prefork")


class TemplateUnavailable(RuntimeError):
    """The template cannot fork this instance now; the host starts it the ordinary way."""


@dataclass
class ForkedWorker:
    """A forked instance as the host sees it: the surface of ``asyncio.subprocess.Process`` the
    host uses. Signals go through a pidfd where there is one, so a pid the kernel has reused
    after the instance exited is never signalled."""

    pid: int
    returncode: int | None = None
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _pidfd: int | None = None

    def __post_init__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)
            return
        os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def exited(self, returncode: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = returncode
        self._exited.set()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def watch_without_template(self) -> None:
        """The template is gone, so nobody reports this exit: learn of it from the pidfd
        (its status is unknown; the instance was told to stop, so it counts as SIGTERM)."""
        if self.returncode is not None:
            return
        if self._pidfd is None:
            self.exited(-signal.SIGTERM)
            return
        loop = asyncio.get_running_loop()
        fd = self._pidfd

        def gone() -> None:
            loop.remove_reader(fd)
            self.exited(-signal.SIGTERM)

        loop.add_reader(fd, gone)


class Template:
    """The host's handle on its worker template: start it, fork instances, stop it."""

    def __init__(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str],
        log_file: IO[bytes] | None,
        cwd: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.cwd = cwd
        self.env = dict(env)
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None
        self.problem: str | None = None
        """Why the template cannot fork (it refused, or exited); None while it can."""
        self.workers: dict[int, ForkedWorker] = {}
        self.forks = 0
        self._ready: asyncio.Future[bool] | None = None
        self._pending: dict[str, asyncio.Future[ForkedWorker]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._tokens = 0

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid

    async def start(self) -> None:
        """Start the template; it becomes ready once it has imported the app (``fork`` waits)."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devhost.prefork",
            "--workdir",
            str(self.workdir),
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log_file,
            cwd=self.cwd,
        )
        self._reader = asyncio.create_task(self._read())

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait until the template has imported the app; False when it cannot fork."""
        if self._ready is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            self.problem = f"not ready within {timeout_s:g} s"
            return False

    async def fork(self, function: str, instance: int, *, decided_at: float) -> ForkedWorker:
        """Fork one instance of ``function``; ``TemplateUnavailable`` when the template
        cannot (not started, refused, gone)."""
        if not await self.ready():
            raise TemplateUnavailable(self.problem or "not started")
        process = self.process
        assert process is not None
        assert process.stdin is not None
        self._tokens += 1
        token = str(self._tokens)
        future: asyncio.Future[ForkedWorker] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            process.stdin.write(f"fork {token} {function} {instance} {decided_at:.6f}\n".encode())
            await process.stdin.drain()
            worker = await asyncio.wait_for(asyncio.shield(future), FORK_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise TemplateUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._pending.pop(token, None)
        self.forks += 1
        return worker

    async def close(self) -> None:
        """Stop the template (its instances should have exited first)."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                self._handle(line.decode("ascii", "replace").split(maxsplit=2))
        finally:
            await process.wait()
            self.problem = self.problem or f"exited with {process.returncode}"
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(False)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(TemplateUnavailable(self.problem))
            for worker in self.workers.values():
                worker.watch_without_template()

    def _handle(self, words: list[str]) -> None:
        if not words:
            return
        kind, rest = words[0], words[1:]
        if kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(True)
        elif kind == "refused":
            self.problem = " ".join(rest) or "refused"
            log.warning("the worker template cannot fork: %s", self.problem)
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(False)
        elif kind == "forked" and len(rest) == 2:
            # The template reports a fork before it can reap (and report the exit of) that
            # instance, so this is always a new process, even when its pid was used before.
            future = self._pending.get(rest[0])
            worker = self.workers[int(rest[1])] = ForkedWorker(int(rest[1]))
            if future is not None and not future.done():
                future.set_result(worker)
            else:  # the host gave up waiting for this fork: nobody runs it, so it stops
                worker.terminate()
        elif kind == "failed" and rest:
            future = self._pending.get(rest[0])
            reason = rest[1] if len(rest) > 1 else "failed"
            if future is not None and not future.done():
                future.set_exception(TemplateUnavailable(reason))
        elif kind == "exit" and len(rest) == 2:
            gone = self.workers.pop(int(rest[0]), None)
            if gone is not None:
                gone.exited(int(rest[1]))
