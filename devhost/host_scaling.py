"""The host's scaling loop: per queue or hub function a scaler (host.json's per-instance target,
scale.json's limits, a quota cap from the model deployment's TPM), a step that measures the
backlogs and starts or stops instances, the doorbell wait between steps, and ``state.json`` for
``devhost status``. ``Host`` is built on :class:`ScalingLoop`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from devhost.appmodel import EVENT_HUB, SERVICE_BUS, AppModel
from devhost.broker import Broker
from devhost.host_workers import WorkerPool
from devhost.quota_status import read_quota_status, read_store_quota_status
from devhost.scaler import (
    FUNCTION_PREFIX,
    FunctionScaler,
    QuotaBinding,
    QuotaPlanner,
    ScaleLimits,
    stage_samples,
)
from devhost.settings import DevhostSettings
from devhost.workdir_lock import cannot_write
from shared import bootstrap
from shared.adapters.local.sqlite import storage_problem
from shared.config import Settings
from shared.domain.messages import Stage
from shared.errors import SwitchboardError
from shared.ports import DocumentStore

log = logging.getLogger("devhost.host")

SAMPLE_EVERY_S = 2.0
"""How often the scaler reads newly finished stage records to measure call profiles."""
FOLLOW_UP_S = 0.1
"""How soon the scaler looks again after a step that started instances (a burst arriving)."""
WAKE_GAP_S = 0.02
"""The least time between two scaler steps woken by doorbells (a queue that rings while its
function cannot start an instance must not make the scaler spin)."""


class ScalingLoop(WorkerPool):
    """What ``Host`` does to scale its functions. The attributes are the host's own."""

    model: AppModel | None
    broker: Broker | None
    limits: ScaleLimits
    quota_aware: bool
    wake_on_arrival: bool
    scalers: dict[str, FunctionScaler]
    quota: QuotaPlanner | None
    history: deque[dict[str, Any]]
    http_port: int
    simulator_url: str | None
    simulator_options: Any  # devhost.host.SimulatorOptions (not imported: host imports this)
    _records_container: str
    _samples: DocumentStore | None
    _sampled_at: float
    _hub_published: dict[str, int]
    _draining: set[asyncio.Task[None]]
    _quota_state: dict[str, list[dict[str, Any]]]
    _quota_container: str

    def _make_scalers(self, settings: Settings) -> None:
        """One scaler per queue or hub function, with host.json's per-instance target; the
        agents' scalers also get a quota cap when their deployment's TPM is known."""
        assert self.model is not None
        host = self.model.host
        bindings: list[QuotaBinding] = []
        for spec in self.model.of_type(SERVICE_BUS):
            self.scalers[spec.name] = FunctionScaler(
                spec.name, host.max_concurrent_calls, self.limits
            )
            stage = _stage_of(spec.name)
            if not self.quota_aware or stage is None:
                continue
            deployment = settings.llm.deployments_for(stage)[0]
            tpm = settings.llm.deployment_tpm.get(deployment)
            if tpm:
                bindings.append(
                    QuotaBinding(
                        function=spec.name,
                        stage=stage.value,
                        deployment=deployment,
                        tokens_per_minute=tpm,
                        max_tokens=settings.llm.max_tokens.get(stage, 300),
                        per_instance=host.max_concurrent_calls,
                        max_instances=self.limits.max_instances,
                    )
                )
        self._records_container = settings.conversations_container
        self._quota_container = settings.quota_container
        # The conversations are read through the store port, like every other reader.
        self._samples = bootstrap.build_store(settings)
        if bindings:
            self.quota = QuotaPlanner(bindings, prior_latency_s=self._prior_latency_s())
        for spec in self.model.of_type(EVENT_HUB):
            self.scalers[spec.name] = FunctionScaler(
                spec.name,
                host.max_event_batch_size,
                self.limits,
                cap=self.limits.event_hub_partitions,
            )
        for name, scaler in self.scalers.items():
            scaler.always_ready = self.limits.always_ready_for(name)
        unknown = [
            n
            for n, _ in self.limits.always_ready
            if n.startswith(FUNCTION_PREFIX) and n[len(FUNCTION_PREFIX) :] not in self.scalers
        ]
        if unknown:
            log.warning("alwaysReady names no queue or hub function: %s", ", ".join(unknown))

    def _prior_latency_s(self) -> float:
        """Seconds per call assumed until calls are measured: the simulator's fixed latency if
        one was set, else DEVHOST_CALL_LATENCY_S (default 2)."""
        options = self.simulator_options
        if options is not None and options.latency_ms is not None and options.latency_ms > 0:
            return float(options.latency_ms) / 1000.0
        return DevhostSettings.from_env(self.settings_env).call_latency_s

    def backlogs(self) -> dict[str, int]:
        """Per function: messages or events waiting or in flight (Azure's active message count,
        which includes locked ones; a scheduled message counts once it is due). For the hub:
        events past the consumer group's checkpoints, summed over partitions, or the events
        published since the previous call if more. A hub consumer checkpoints each event within
        milliseconds, so a snapshot of the checkpoint lag alone reads zero at most polls even
        under a steady stream, and the function would be scaled to zero while events flow
        (each restart then costs a cold start of the whole stream's latency). The larger of the
        two, not their sum: events that just arrived are also in the lag, and a burst counted
        twice would start twice the instances it needs."""
        assert self.model is not None
        assert self.broker is not None
        stats = self.broker.queue_stats()
        result: dict[str, int] = {}
        for spec in self.model.of_type(SERVICE_BUS):
            q = stats.get(spec.source)
            result[spec.name] = (q.active + q.locked) if q else 0
        for spec in self.model.of_type(EVENT_HUB):
            group = str(spec.consumer_group)
            partitions = self.broker.hub_stats(spec.source, group)
            published = sum(p.last_sequence + 1 for p in partitions.values())
            arrived = max(0, published - self._hub_published.get(spec.name, published))
            self._hub_published[spec.name] = published
            result[spec.name] = max(sum(p.backlog for p in partitions.values()), arrived)
        return result

    async def _scale_loop(self) -> None:
        while not self._stop.is_set():
            try:
                started = await self.scale_once()
            except Exception as exc:
                problem = storage_problem(exc, within=self.workdir.root)
                if problem is not None:
                    self._fail(cannot_write(self.workdir.root, problem))
                    return
                log.exception("scaler step failed")
                # A step that failed waits the whole interval: a ringing doorbell must not
                # repeat it many times a second.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.limits.polling_interval_s)
                continue
            # A step that started instances looks again soon: a burst is still arriving, and
            # the rest of it should not wait a whole interval for the instances it needs.
            interval = self.limits.polling_interval_s
            await self._wait_for_work(min(interval, FOLLOW_UP_S) if started else interval)

    async def _wait_for_work(self, timeout_s: float) -> None:
        """Sleep until the next polling interval, the host stops, or a message or event
        arrives for a function that has no instance (its doorbell rings)."""
        assert self.model is not None
        assert self.broker is not None
        started = time.monotonic()
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._stop.wait())]
        for name in self.scalers if self.wake_on_arrival else ():
            if self.workers.get(name):
                continue  # its instances take the message; the poll is soon enough for more
            spec = self.model.by_name(name)
            if spec.trigger_type == SERVICE_BUS:
                waits.append(
                    asyncio.create_task(self.broker.wait_for_messages(spec.source, timeout_s))
                )
            elif spec.trigger_type == EVENT_HUB:
                waits.append(
                    asyncio.create_task(self.broker.wait_for_events(spec.source, timeout_s))
                )
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                log.debug("doorbell wait failed (%s); polling", outcome)
        rest = WAKE_GAP_S - (time.monotonic() - started)
        if rest > 0 and not self._stop.is_set():
            await asyncio.sleep(rest)

    async def scale_once(self) -> int:
        """One polling interval: measure the backlogs (and, every few seconds, the model call
        profiles), let every function's scaler decide, start or stop workers to match. Returns
        how many instances it started."""
        now = time.time()
        backlogs = self.backlogs()
        caps = await self._quota_caps(backlogs, now)
        decided_at = time.monotonic()
        spawned = 0
        for name, scaler in self.scalers.items():
            running = self.workers.setdefault(name, [])
            alive = [w for w in running if w.process.returncode is None]
            if len(alive) != len(running):
                exited = [w for w in running if w.process.returncode is not None]
                log.warning("%s: %d worker(s) exited; replacing as needed", name, len(exited))
                self._check_exits(name, exited)
            running[:] = alive
            if self.failure is not None:
                return spawned  # no worker is started again; the host is stopping
            scaler.instances = len(alive)
            scaler.quota_cap = caps.get(name)
            want = scaler.decide(backlogs.get(name, 0), decided_at)
            while len(running) < want:
                running.append(await self._spawn(name, self._next_instance(running), decided_at))
                spawned += 1
            while len(running) > want:
                # Draining can take as long as an invocation; the scaler does not wait for it.
                task = asyncio.create_task(self._terminate(running.pop()))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
        self._record_children()
        self.history.append(
            {
                "t": now,
                "backlog": backlogs,
                "instances": {n: len(w) for n, w in self.workers.items()},
                "quotaCap": caps,
            }
        )
        self._write_state(backlogs)
        return spawned

    async def _quota_caps(self, backlogs: Mapping[str, int], now: float) -> dict[str, int]:
        """The quota caps, after feeding the planner the stage records finished since the last
        read (the store is read at most every SAMPLE_EVERY_S seconds, off the event loop)."""
        if self.quota is None:
            return {}
        if now - self._sampled_at >= SAMPLE_EVERY_S:
            # Records are written just after they complete; the margin catches late commits.
            since = max(self._sampled_at - 5.0, now - self.quota.window_s)
            try:
                assert self._samples is not None  # made with the planner
                samples = await stage_samples(self._samples, self._records_container, since=since)
            except (sqlite3.Error, SwitchboardError) as exc:
                log.debug("stage records unreadable (%s); keeping the last call profiles", exc)
            else:
                self.quota.observe(samples)
                self._sampled_at = now
            await self._read_quota_status(now)
        return self.quota.caps(backlogs, now)

    async def _read_quota_status(self, now: float) -> None:
        """What the workers' limiters last published to their quota ledger (per deployment the
        learned accounting, limits and use of each instance), for ``state.json``."""
        backend = self.settings_env.get("LLM_QUOTA_BACKEND")
        try:
            if backend == "sqlite":
                path = self.settings_env.get("LLM_QUOTA_SQLITE_PATH", "")
                self._quota_state = read_quota_status(path, now=now) if path else {}
            elif backend == "store" and self._samples is not None:
                self._quota_state = await read_store_quota_status(
                    self._samples, container=self._quota_container, now=now
                )
        except (sqlite3.Error, SwitchboardError) as exc:  # the status must not stop the scaler
            log.debug("quota status unreadable: %s", exc)

    def _write_state(self, backlogs: Mapping[str, int]) -> None:
        """Write ``state.json`` for ``devhost status``: per function its source, instances,
        backlog, ceilings, what bound the last decision, and the measured call profile."""
        assert self.model is not None
        now = time.time()
        functions: dict[str, dict[str, Any]] = {}
        for name, scaler in self.scalers.items():
            info: dict[str, Any] = {
                "source": self.model.by_name(name).source,
                "instances": len(self.workers.get(name, [])),
                "backlog": backlogs.get(name, 0),
                "target": scaler.target_per_instance,
                "max": scaler.limits.max_instances,
                "cap": scaler.cap,
                "quotaCap": scaler.quota_cap,
                "bound": scaler.bound,
                "alwaysReady": scaler.always_ready,
            }
            if self.quota is not None and name in self.quota.bindings:
                profile = self.quota.profile(name, now)
                info["profile"] = {
                    "secondsPerInvocation": round(profile.seconds, 3),
                    "tokensPerInvocation": round(profile.tokens),
                    "samples": profile.samples,
                }
            functions[name] = info
        state = {
            "pid": os.getpid(),
            "at": now,
            "http": f"http://127.0.0.1:{self.http_port}/api",
            "simulator": self.simulator_url,
            "functions": functions,
            "quota": self._quota_state,
        }
        tmp = self.workdir.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.workdir.state)


def _stage_of(function: str) -> Stage | None:
    for stage in Stage:
        if function == f"{stage.value}_agent":
            return stage
    return None
