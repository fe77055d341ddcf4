"""The host's worker processes: starting an instance (forked from the worker template, or as
its own interpreter), recording the running ones, stopping them, and telling a crash loop or a
workdir that refuses writes from an ordinary exit. ``Host`` is built on :class:`WorkerPool`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from devhost.environment import PROJECT_ROOT, Workdir
from devhost.lifeline import ProcessRecord, child_environment
from devhost.prefork_host import ForkedWorker, Template, TemplateUnavailable
from devhost.startup import DECIDED_AT_ENV
from devhost.workdir_lock import cannot_write
from shared.adapters.local.sqlite import storage_problem

log = logging.getLogger("devhost.host")

EXIT_CANNOT_WRITE = 74
"""A worker's exit status when the file system refuses its writes (full, read-only): the host
stops with a message instead of starting the worker again."""
CRASH_LOOP_EXITS = 5
"""Workers of one function failing this many times in a row right after starting stop the host."""
CRASH_LOOP_WINDOW_S = 10.0
"""A worker that exits with an error within this long of starting counts towards a crash loop."""


@dataclass
class WorkerProcess:
    function: str
    instance: int
    process: asyncio.subprocess.Process | ForkedWorker
    started: float
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def forked(self) -> bool:
        """Forked from the worker template, rather than started as its own interpreter."""
        return isinstance(self.process, ForkedWorker)


class WorkerPool:
    """What ``Host`` does with worker processes. The attributes are the host's own."""

    workdir: Workdir
    environ: dict[str, str]
    settings_env: dict[str, str]
    template: Template | None
    workers: dict[str, list[WorkerProcess]]
    failure: str | None
    failed: asyncio.Event
    _stop: asyncio.Event
    _log: IO[bytes] | None
    _sim_process: asyncio.subprocess.Process | None
    _records: ProcessRecord
    _recorded: set[int]
    _crashes: dict[str, int]

    def _next_instance(self, running: list[WorkerProcess]) -> int:
        used = {w.instance for w in running}
        return next(i for i in range(len(used) + 1) if i not in used)

    def _worker_env(self) -> dict[str, str]:
        return {**self.environ, **self.settings_env, **child_environment()}

    async def _spawn(
        self, function: str, instance: int, decided_monotonic: float | None = None
    ) -> WorkerProcess:
        """Start an instance: forked from the template when there is one that can fork, else
        as its own interpreter. ``decided_monotonic`` is when the scaler decided on it."""
        decided_at = time.time() - (
            0.0 if decided_monotonic is None else time.monotonic() - decided_monotonic
        )
        if self.template is not None and self.template.problem is None:
            try:
                forked = await self.template.fork(function, instance, decided_at=decided_at)
            except TemplateUnavailable as exc:
                log.warning(
                    "forking %s#%d failed (%s); starting it on its own", function, instance, exc
                )
            else:
                return WorkerProcess(function, instance, forked, time.time())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devhost.worker",
            "--function",
            function,
            "--workdir",
            str(self.workdir.root),
            "--instance",
            str(instance),
            env={**self._worker_env(), DECIDED_AT_ENV: f"{decided_at:.6f}"},
            stdout=self._log,
            stderr=self._log,
            cwd=PROJECT_ROOT,
        )
        return WorkerProcess(function, instance, process, time.time())

    def _check_exits(self, function: str, exited: list[WorkerProcess]) -> None:
        """Stop the host, rather than start workers again, when they cannot work: one exited
        because the file system refuses its writes, or they keep failing as they start."""
        for worker in exited:
            code = worker.process.returncode
            assert code is not None
            lived = time.monotonic() - worker.started_monotonic
            if code == EXIT_CANNOT_WRITE:
                problem = self._write_problem() or "see " + str(self.workdir.logs / "devhost.log")
                self._fail(cannot_write(self.workdir.root, f"{function} worker: {problem}"))
                return
            if code > 0 and lived < CRASH_LOOP_WINDOW_S:
                self._crashes[function] = self._crashes.get(function, 0) + 1
            else:
                self._crashes[function] = 0  # killed by a signal, or ran a while: no loop
        crashes = self._crashes.get(function, 0)
        if crashes >= CRASH_LOOP_EXITS:
            self._fail(
                f"{function} workers exited {crashes} times in a row right after starting "
                f"(last exit status {exited[-1].process.returncode}); "
                f"see {self.workdir.logs / 'devhost.log'}"
            )

    def _write_problem(self) -> str | None:
        """Why a small file cannot be written (and synced) in the workdir, if it cannot."""
        probe = self.workdir.root / ".write-probe"
        try:
            with probe.open("wb") as handle:
                handle.write(b"\0" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            return storage_problem(exc) or str(exc)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def _fail(self, message: str) -> None:
        """Stop scaling and tell the caller (``failed``) why the host cannot go on."""
        if self.failure is not None:
            return
        log.info("devhost stops: %s", message)  # the caller reports it (HostError)
        self.failure = message
        self.failed.set()
        self._stop.set()

    def _record_children(self) -> None:
        """Write the running simulator and workers to ``processes.json`` when they changed."""
        children: dict[int, str] = {}
        if self._sim_process is not None and self._sim_process.returncode is None:
            children[self._sim_process.pid] = "simulator"
        if self.template is not None and self.template.pid is not None:
            children[self.template.pid] = "template"
        for function, workers in self.workers.items():
            for worker in workers:
                if worker.process.returncode is None:
                    children[worker.process.pid] = f"{function}#{worker.instance}"
        if set(children) != self._recorded:
            self._records.write(children.items())
            self._recorded = set(children)

    async def _terminate(self, worker: WorkerProcess) -> None:
        if worker.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.process.wait(), 35)
        except TimeoutError:
            worker.process.kill()
            await worker.process.wait()

    def kill_random_worker(self, rng: Any) -> WorkerProcess | None:
        """SIGKILL one running worker (for chaos tests): the scaler replaces it."""
        alive = [w for ws in self.workers.values() for w in ws if w.process.returncode is None]
        if not alive:
            return None
        victim: WorkerProcess = rng.choice(alive)
        with contextlib.suppress(ProcessLookupError):
            victim.process.kill()
        return victim
