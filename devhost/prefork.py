"""The worker template: a process that has imported the Function App once and forks instances.

Starting a worker with ``python -m devhost.worker`` costs an interpreter start and the import of
the app and everything it uses (``azure.functions``, pydantic models, the OpenAI client, the
SQLite store): most of a second on a quiet machine, several under load, and all of it on the
path of the first message after a function scaled to zero. The template pays that once, when
the host starts, and then forks a ready worker in milliseconds.

**Forking safely.** ``fork`` copies only the calling thread; a lock held by another thread at
that moment stays held for ever in the child, and an event loop's selector and self-pipe are
shared with the parent. So the template never starts a thread or an event loop: it imports
(``WARM_IMPORTS``), describes the app (``load_app``), checks that it is still the only thread
(``fork_problem``; if an import started one, it refuses every fork and the host starts workers
the ordinary way), and then serves the host with blocking ``select`` calls. It opens no SQLite
connection and builds no client: each instance opens its broker and store, and builds its
services, after the fork, exactly as a spawned worker does.

**The protocol** is lines of ASCII over the template's stdin (from the host) and stdout (to it):

    host -> template   fork <token> <function> <instance> <decided-at>
    template -> host   ready <pid> | refused <reason>
                       forked <token> <pid> | failed <token> <reason>
                       exit <pid> <returncode>

``returncode`` follows ``asyncio.subprocess.Process.returncode``: the exit status, or minus the
signal that ended the process. The template is the instances' parent, so it reaps them and
reports each exit; the host holds a :class:`ForkedWorker` per instance with the same surface
as a spawned process (``pid``, ``returncode``, ``send_signal``, ``kill``, ``wait``).

**Dying with the host** (see ``devhost.lifeline``): the template asks the kernel for SIGTERM
when the host goes (``PR_SET_PDEATHSIG``; no watchdog thread, it checks its parent between
``select`` calls instead) and exits at once; each instance arms its own parent-death signal
and watchdog against the template, so it drains and exits as it would on a host stop. A host
that stops closes the template's stdin after its workers have exited, and the template exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devhost.lifeline import PARENT_ENV, set_parent_death_signal
from devhost.settings import DevhostSettings
from devhost.startup import DECIDED_AT_ENV

log = logging.getLogger("devhost.prefork")

PREFORK_ENV = "DEVHOST_PREFORK"
"""``0`` starts every worker as its own interpreter (``python -m devhost.worker``); anything
else, or unset, forks them from the template where the platform allows."""
WARM_IMPORTS = (
    "devhost.worker",
    "devhost.bindings",
    "devhost.broker",
    "devhost.broker.publisher",
    "shared.adapters.local.sqlite_store",
    "shared.adapters.azure.openai_chat",
    "openai.resources.chat.chat",
    "openai.resources.chat.completions.completions",
    "shared.telemetry",
    # The model client's transport, which the SDK imports on its first request, not when the
    # client is built: without them every new instance's first model call pays for the imports.
    "httpcore2",
    "anyio._backends._asyncio",
    "truststore",
)
"""Modules an instance would import on its first message; the template imports them once.
``tests/integration/test_warm_imports.py`` checks that a first model call after these imports
none of its own."""
EXPORTER_IMPORTS = {
    "otlp": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "requests",
    ),
    "azuremonitor": ("azure.monitor.opentelemetry.exporter",),
}
"""The telemetry exporter's modules (``TELEMETRY_EXPORTER``), imported when it is built: the
OTLP exporter's protobuf and HTTP stack alone take a few hundred milliseconds."""
READY_TIMEOUT_S = 60.0
FORK_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
WATCH_EVERY_S = 0.5


def prefork_enabled(environ: Mapping[str, str]) -> bool:
    """Whether workers are forked from a template: on Linux, unless ``DEVHOST_PREFORK=0``."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    return DevhostSettings.from_env(environ).prefork


def fork_problem() -> str | None:
    """Why this process must not fork workers now, or None: it must be its only thread."""
    threads = threading.enumerate()
    if len(threads) > 1:
        names = ", ".join(sorted(t.name for t in threads if t is not threading.main_thread()))
        return f"{len(threads)} threads are running ({names}); forking now is unsafe"
    return None


# --------------------------------------------------------------------------- the template


def warm(root: Path, environ: Mapping[str, str]) -> Any:
    """Import what an instance needs and describe the app; the model is every instance's."""
    from devhost.appmodel import load_app

    exporter = environ.get("TELEMETRY_EXPORTER", "").strip().lower()
    for module in (*WARM_IMPORTS, *EXPORTER_IMPORTS.get(exporter, ())):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional adapter: the instance imports it if needed
            log.debug("not pre-imported: %s (%s)", module, exc)
    return load_app(root, environ)


class _Template:
    """The template's loop: read commands, fork instances, reap them, report."""

    def __init__(self, workdir: Path, model: Any, *, parent: int | None) -> None:
        self.workdir = workdir
        self.model = model
        self.parent = parent
        self.children: set[int] = set()
        self._buffer = b""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def serve(self) -> int:
        # Ctrl-C reaches the whole process group; the host stops the template (by closing its
        # channel) once its instances have drained, so the template leaves SIGINT to them.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w)
        while True:
            if self.parent is not None and os.getppid() != self.parent:
                log.warning("devhost (pid %d) is gone; the template stops", self.parent)
                return 0
            readable, _, _ = select.select([0, self._wake_r], [], [], WATCH_EVERY_S)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            self._reap()
            if 0 in readable:
                chunk = os.read(0, 4096)
                if not chunk:
                    return 0  # the host closed the channel: it is stopping
                self._buffer += chunk
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    self._command(line.decode("ascii", "replace").split())

    def _command(self, words: list[str]) -> None:
        if len(words) == 5 and words[0] == "fork":
            _, token, function, instance, decided_at = words
            self._fork(token, function, instance, decided_at)
        elif words:
            log.warning("template: unknown command %r", " ".join(words)[:80])

    def _fork(self, token: str, function: str, instance: str, decided_at: str) -> None:
        problem = fork_problem()
        if problem is not None:
            _say(f"failed {token} {problem.replace(chr(10), ' ')}")
            return
        try:
            pid = os.fork()
        except OSError as exc:
            _say(f"failed {token} fork: {exc}")
            return
        if pid == 0:
            self._become_instance(function, instance, decided_at)  # never returns
        self.children.add(pid)
        _say(f"forked {token} {pid}")

    def _become_instance(self, function: str, instance: str, decided_at: str) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)  # the host's commands are the template's, not this instance's
            os.close(null)
            os.dup2(2, 1)  # and stdout is its report channel: print to the log instead
            os.environ[PARENT_ENV] = str(os.getppid())
            os.environ[DECIDED_AT_ENV] = decided_at
            from devhost.worker import run_worker

            run_worker(function, self.workdir, instance, model=self.model, forked=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            _say(f"exit {pid} {_returncode(status)}")


def _returncode(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode("ascii", "replace"))


def template_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devhost.prefork")
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=DevhostSettings.from_env().log_level,
        format="%(asctime)s template %(levelname)s %(name)s: %(message)s",
    )
    parent: int | None = None
    with contextlib.suppress(ValueError):
        parent = int(os.environ.get(PARENT_ENV, ""))
    if parent is not None:
        # No watchdog thread here (a thread would make forking unsafe): the loop checks instead.
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            return 0
    from devhost.environment import PROJECT_ROOT

    try:
        model = warm(PROJECT_ROOT, os.environ)
    except Exception as exc:
        traceback.print_exc()
        _say(f"refused cannot load the app: {type(exc).__name__}")
        return 1
    problem = fork_problem()
    if problem is not None:
        _say(f"refused {problem}")
        return 1
    # What the template imported lives as long as every instance: the collector leaves it be,
    # so no instance's collections write to (and copy) the pages it shares with the template.
    gc.collect()
    gc.freeze()
    _say(f"ready {os.getpid()}")
    return _Template(args.workdir, model, parent=parent).serve()


# --------------------------------------------------------------------------- the host's side


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


if __name__ == "__main__":
    raise SystemExit(template_main())
