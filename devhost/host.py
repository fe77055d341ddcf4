"""The devhost supervisor: simulator, broker, HTTP triggers, blob inbox and the scaler.

Queue and hub triggers run in worker processes (``devhost.worker``) that the scaler starts and
stops per function; HTTP and blob triggers run in this process. Workers are forked from a
worker template that has imported the app once (``devhost.prefork``), or started as their own
interpreter where that is off or unavailable.

The scaler steps once per polling interval, and at once when a message or event arrives for a
function that has no instance: the broker's doorbell for that queue or hub wakes it, so the
first message after an idle spell starts its instance without waiting for the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from devhost import doctor
from devhost.amqp import AmqpServer
from devhost.amqp.__main__ import config_from_env
from devhost.appmodel import BLOB, EVENT_HUB, SERVICE_BUS, AppModel, load_app
from devhost.blobs import InboxPoller
from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.dashboard import Dashboard, span_settings
from devhost.environment import (
    PROJECT_ROOT,
    SIMULATOR_KEY,
    Workdir,
    app_settings,
)
from devhost.host_scaling import FOLLOW_UP_S as FOLLOW_UP_S
from devhost.host_scaling import ScalingLoop
from devhost.host_workers import (
    CRASH_LOOP_EXITS as CRASH_LOOP_EXITS,
)
from devhost.host_workers import (
    CRASH_LOOP_WINDOW_S as CRASH_LOOP_WINDOW_S,
)
from devhost.host_workers import (
    EXIT_CANNOT_WRITE as EXIT_CANNOT_WRITE,
)
from devhost.host_workers import (
    WorkerProcess as WorkerProcess,
)
from devhost.http import function_key, start_http
from devhost.lifeline import ProcessRecord, child_environment
from devhost.outcomes import declare_outcomes
from devhost.prefork import prefork_enabled
from devhost.prefork_host import Template
from devhost.scaler import (
    FunctionScaler,
    QuotaPlanner,
    ScaleLimits,
)
from devhost.settings import DevhostSettings
from devhost.simulator.config import ADMIN_KEY_ENV
from devhost.workdir_lock import LOCK_FILE as LOCK_FILE  # the lock is part of the host's API
from devhost.workdir_lock import HostError as HostError
from devhost.workdir_lock import WorkdirLock as WorkdirLock
from devhost.workdir_lock import cannot_write as cannot_write
from shared import bootstrap
from shared.adapters.local.sqlite import storage_problem
from shared.config import Settings
from shared.domain.messages import Stage
from shared.ports import DocumentStore

log = logging.getLogger(__name__)

SCALE_FILE = PROJECT_ROOT / "scale.json"
QUEUE_FILE_KEYS = ("lockDurationSeconds", "maxDeliveryCount", "duplicateDetectionWindowSeconds")
HISTORY_LIMIT = 3600
"""Scaler samples ``Host.history`` keeps, newest last: an hour at the 1 s polling interval."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SimulatorOptions:
    """How devhost starts its Azure OpenAI simulator (a subprocess on loopback)."""

    port: int = 0
    latency_ms: float | None = None
    tpm: int | None = None
    extra_args: list[str] = field(default_factory=list)


class Host(ScalingLoop):
    """Everything ``devhost run`` runs. ``async with Host(...) as host`` starts and stops it."""

    def __init__(
        self,
        workdir: Workdir,
        *,
        simulator: SimulatorOptions | None = SimulatorOptions(),
        http_port: int = 7071,
        limits: ScaleLimits | None = None,
        environ: Mapping[str, str] | None = None,
        quota_aware: bool = True,
        lock: WorkdirLock | None = None,
        prefork: bool | None = None,
        wake_on_arrival: bool = True,
        amqp_port: int | None = None,
        amqp_required: bool = True,
    ) -> None:
        """Describe the host; nothing starts before :meth:`start`.

        ``lock`` is the workdir's :class:`WorkdirLock` when the caller already holds it (the
        demo clears its folder under it first); the host releases it when it stops.
        ``prefork`` forks workers from a template that has imported the app (default: on,
        unless ``DEVHOST_PREFORK=0`` or the platform cannot fork safely).
        ``wake_on_arrival`` lets the doorbells of functions without instances wake the scaler;
        off, it steps once per polling interval only (benchmarks compare the two).
        """
        self.workdir = workdir  # made by start(), where a folder that cannot be made is reported
        self.lock = lock if lock is not None else WorkdirLock(self.workdir)
        self.simulator_options = simulator
        self.http_port = http_port
        self.limits = limits or ScaleLimits.from_file(SCALE_FILE)
        self.environ = dict(os.environ if environ is None else environ)
        self.quota_aware = quota_aware
        self.prefork = prefork_enabled(self.environ) if prefork is None else prefork
        self.template: Template | None = None
        self.wake_on_arrival = wake_on_arrival
        # AMQP 1.0 for the Azure SDKs over the same broker: None is off (the default, so tests
        # never bind a fixed port), 0 any free port.
        self.amqp_port = amqp_port
        self.amqp_required = amqp_required
        self.amqp: AmqpServer | None = None
        self.simulator_url: str | None = None
        self.settings_env: dict[str, str] = {}
        self.model: AppModel | None = None
        self.broker: Broker | None = None
        self.workers: dict[str, list[WorkerProcess]] = {}
        self.scalers: dict[str, FunctionScaler] = {}
        self.quota: QuotaPlanner | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LIMIT)
        self.function_key = ""
        """The workdir's key for the app's function-level HTTP routes (``?code=`` or the
        ``x-functions-key`` header); set by :meth:`start`."""
        self.simulator_admin_key: str | None = None
        """The simulator's admin key for this run (header ``x-sim-admin-key``)."""
        self._sampled_at = 0.0
        self._records_container = "conversations"
        self._samples: DocumentStore | None = None
        self._quota_state: dict[str, list[dict[str, Any]]] = {}
        self._quota_container = "quota"
        self._hub_published: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sim_process: asyncio.subprocess.Process | None = None
        self._http_runner: Any = None
        self.dashboard: Dashboard | None = None
        self._log: IO[bytes] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self.failure: str | None = None
        """Why the host stopped on its own (a workdir it cannot write, workers that crash as
        they start); ``failed`` is set with it. Leaving ``async with`` then raises HostError."""
        self.failed = asyncio.Event()
        self._records = ProcessRecord(workdir.root)
        self._recorded: set[int] = set()
        self._crashes: dict[str, int] = {}

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Host:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # whatever did start (the simulator, the broker) stops again
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self.failure is not None and exc[0] is None:
            raise HostError(self.failure)

    async def start(self) -> None:
        """Start everything; raise ``HostError`` first if another host holds the workdir, a state
        file is damaged, or the workdir cannot be written."""
        self.lock.acquire()  # and end what an earlier host there left running
        try:
            broken = doctor.damaged(self.workdir)
            if broken:
                raise HostError(doctor.refusal(self.workdir, broken))
            await self._start()
        except Exception as exc:
            problem = storage_problem(exc, within=self.workdir.root)
            if problem is None:
                raise
            raise HostError(cannot_write(self.workdir.root, problem)) from exc

    async def _start(self) -> None:
        self.workdir.create()
        self._log = (self.workdir.logs / "devhost.log").open("ab")
        options = self.simulator_options
        settings = self._make_settings(options)
        # Workers send their redacted spans to the dashboard on this host's port (picked now:
        # forked workers inherit the settings their template starts with), unless the user
        # chose an exporter; this process's own settings stay as they were.
        if self.http_port == 0:
            self.http_port = free_port()
        self.function_key = function_key(self.workdir.root)
        self.settings_env.update(
            span_settings(self.http_port, self.function_key, self.settings_env)
        )
        if self.prefork:
            # Its imports overlap with the simulator's start; the first fork waits for them.
            self.template = Template(
                self.workdir.root, env=self._worker_env(), log_file=self._log, cwd=PROJECT_ROOT
            )
            await self.template.start()
        if options is not None:
            await self._start_simulator(options, settings)
            self._record_children()
        self.model = load_app(PROJECT_ROOT, self.settings_env)
        self.broker = Broker(self.workdir.broker)
        self._declare_entities(settings)
        if self.amqp_port is not None:
            self.amqp = self._start_amqp(self.broker, self.amqp_port)
        bootstrap.configure(settings=settings, publisher=BrokerPublisher(self.broker))
        self.dashboard = Dashboard(self.workdir, key=self.function_key, settings=settings)
        try:
            self._http_runner, self.http_port = await start_http(
                self.model, port=self.http_port, key=self.function_key, dashboard=self.dashboard.app
            )
        except OSError as exc:
            raise HostError(
                f"cannot serve HTTP on 127.0.0.1:{self.http_port} ({exc.strerror}); "
                "pick another with --port"
            ) from None
        for spec in self.model.of_type(BLOB):
            poller = InboxPoller(spec, self.workdir.inbox, self.workdir.root / "receipts.sqlite3")
            self._tasks.append(asyncio.create_task(poller.run(self._stop)))
        self._make_scalers(settings)
        self._write_state({})  # running from here on: `send` and `status` must see it
        self._tasks.append(asyncio.create_task(self._scale_loop()))
        log.info(
            "devhost up: http://127.0.0.1:%d/api, simulator %s", self.http_port, self.simulator_url
        )

    def _make_settings(self, options: SimulatorOptions | None) -> Settings:
        """The app settings every devhost process runs with (``settings_env``), pointing at the
        simulator when one runs; ``--tpm`` sets every deployment's tokens per minute."""
        if options is not None:
            self.simulator_url = f"http://127.0.0.1:{options.port or free_port()}"
        self.settings_env = app_settings(
            self.workdir, simulator_url=self.simulator_url, environ=self.environ
        )
        if options is not None and options.tpm is not None:
            deployments = {"gpt-4o-mini", "gpt-4o"} | {
                d
                for stage in Stage
                for d in bootstrap.load_settings(self.settings_env).llm.deployments_for(stage)
            }
            self.settings_env["LLM_DEPLOYMENT_TPM"] = ",".join(
                f"{d}={options.tpm}" for d in sorted(deployments)
            )
        return bootstrap.load_settings(self.settings_env)

    def _start_amqp(self, broker: Broker, port: int) -> AmqpServer | None:
        """Serve the broker over AMQP; a port that is taken stops the host when AMQP was asked
        for explicitly, else it is only logged."""
        try:
            config = config_from_env(self.environ, port=port)
        except ValueError as error:
            raise HostError(f"setting {error}") from None
        server = AmqpServer(broker, config)
        try:
            server.start()
        except OSError as error:
            if self.amqp_required:
                raise HostError(
                    f"AMQP: {error} (set DEVHOST_AMQP_PORT to another port, or off)"
                ) from None
            log.warning("AMQP not started: %s (DEVHOST_AMQP_PORT picks another port)", error)
            return None
        return server

    async def stop(self) -> None:
        """Stop what :meth:`start` started, then release the workdir. A host that never got
        the lock started nothing, and stops nothing (the folder's host keeps running)."""
        if not self.lock.held:
            return
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(
            *(self._terminate(w) for workers in self.workers.values() for w in workers),
            *self._draining,
        )
        self.workers.clear()
        if self.template is not None:
            await self.template.close()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.dashboard is not None:
            await self.dashboard.close()
        await bootstrap.shutdown()
        if self._sim_process is not None and self._sim_process.returncode is None:
            self._sim_process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sim_process.wait(), 5)
            if self._sim_process.returncode is None:
                self._sim_process.kill()
                await self._sim_process.wait()
        if self._samples is not None:
            await self._samples.close()
        if self.amqp is not None:
            self.amqp.stop()
            self.amqp = None
        if self.broker is not None:
            self.broker.close()
        if self._log is not None:
            self._log.close()
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(self.workdir.state.read_text())["pid"] == os.getpid():
                self.workdir.state.unlink()  # nothing runs here any more
        with contextlib.suppress(OSError):
            self._records.clear()  # every child has exited
        self.lock.release()

    # ----------------------------------------------------------------- parts

    async def _start_simulator(self, options: SimulatorOptions, settings: Settings) -> None:
        """The simulator gets the same per-deployment quota the app's limiter assumes."""
        assert self.simulator_url is not None
        port = self.simulator_url.rsplit(":", 1)[1]
        args = [
            sys.executable,
            "-m",
            "devhost.simulator",
            "--port",
            port,
            "--api-key",
            SIMULATOR_KEY,
        ]
        for deployment, tpm in sorted(settings.llm.deployment_tpm.items()):
            args += ["--deployment", f"{deployment}={tpm}"]
        default_tpm = options.tpm or max(settings.llm.deployment_tpm.values(), default=240_000)
        args += ["--tpm", str(default_tpm)]
        if options.latency_ms is not None:
            args += ["--latency-ms", str(options.latency_ms)]
        args += options.extra_args
        # Per run, through the environment (other users can read a command line, not this).
        self.simulator_admin_key = secrets.token_urlsafe(32)
        _write_private(self.workdir.simulator_admin_key, self.simulator_admin_key)
        self._sim_process = await asyncio.create_subprocess_exec(
            *args,
            stdout=self._log,
            stderr=self._log,
            cwd=PROJECT_ROOT,
            env={**os.environ, ADMIN_KEY_ENV: self.simulator_admin_key, **child_environment()},
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._sim_process.returncode is not None:
                    raise RuntimeError(
                        f"the simulator exited with {self._sim_process.returncode}; "
                        f"see {self.workdir.logs / 'devhost.log'}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.simulator_url}/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError("the simulator did not answer within 30 s")

    def _declare_entities(self, settings: Settings) -> None:
        assert self.model is not None
        assert self.broker is not None
        scale = json.loads(SCALE_FILE.read_text(encoding="utf-8"))
        queue_options = scale.get("queues", {})
        for queue in (
            *{f.source for f in self.model.of_type(SERVICE_BUS)},
            settings.queues.deadletter,
        ):
            self.broker.ensure_queue(
                queue,
                # DEVHOST_LOCK_DURATION_S lets crash tests see expired locks in seconds.
                lock_duration_s=float(
                    DevhostSettings.from_env(self.settings_env).lock_duration_s
                    or queue_options.get("lockDurationSeconds", 60)
                ),
                max_delivery_count=int(queue_options.get("maxDeliveryCount", 10)),
                duplicate_window_s=float(queue_options.get("duplicateDetectionWindowSeconds", 600)),
            )
        for spec in self.model.of_type(EVENT_HUB):
            self.broker.ensure_hub(spec.source, partitions=self.limits.event_hub_partitions)
        declare_outcomes(self.broker)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable and writable by its owner only."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
