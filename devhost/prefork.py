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
reports each exit; the host holds a ``ForkedWorker`` (``devhost.prefork_host``) per instance
with the same surface as a spawned process (``pid``, ``returncode``, ``send_signal``, ``kill``,
``wait``).

**Dying with the host** (see ``devhost.lifeline``): the template asks the kernel for SIGTERM
when the host goes (``PR_SET_PDEATHSIG``; no watchdog thread, it checks its parent between
``select`` calls instead) and exits at once; each instance arms its own parent-death signal
and watchdog against the template, so it drains and exits as it would on a host stop. A host
that stops closes the template's stdin after its workers have exited, and the template exits.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

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


if __name__ == "__main__":
    raise SystemExit(template_main())
