"""A worker process: one instance of one queue- or hub-triggered function.

It receives from the broker with peek-lock, keeps up to host.json's ``maxConcurrentCalls``
invocations in flight, renews locks while the function runs (up to
``maxAutoLockRenewalDuration``), completes on return and abandons on an exception: the same
contract the Functions host keeps with ``autoCompleteMessages``. Run as
``python -m devhost.worker --function NAME --workdir DIR --instance ID``.

The pumps are their own modules: ``devhost.servicebus_pump``, ``devhost.eventhub_pump``, over
``devhost.pump`` (what both share); this one starts a process, builds its services, and serves.

Every write to the broker - receive, complete, abandon, renew, checkpoint, and the function's
own sends through ``BrokerPublisher`` - goes through the process's one ``BrokerWriter``, which
group-commits what arrives together (see ``devhost.broker.publisher``). Reads that take no
write lock (event reads, the idle check) stay off it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import signal
import time
from pathlib import Path

from devhost.appmodel import (
    EVENT_HUB,
    SERVICE_BUS,
    AppModel,
    FunctionSpec,
    load_app,
)
from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher, BrokerWriter
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.eventhub_pump import RETRY_WITHOUT_POLICY, EventHubPump
from devhost.lifeline import die_with_parent
from devhost.pump import DRAIN_TIMEOUT_S, HOP_LOG_ENV, HopLog
from devhost.servicebus_pump import ServiceBusPump
from devhost.settings import DevhostSettings
from devhost.startup import decided_at, process_started_at
from shared import bootstrap
from shared.adapters.local.sqlite import can_write, storage_problem

log = logging.getLogger("devhost.worker")

PROFILE_ENV = "DEVHOST_PROFILE"
"""A directory: when set, each worker profiles its event loop's thread (cProfile) and writes
``<function>-<instance>-<pid>.prof`` there as it stops (benchmarks' flame graphs)."""
EXIT_CANNOT_WRITE = 74
"""The exit status that tells the host the file system refuses this worker's writes (a full
disk, a read-only workdir): starting the worker again would fail the same way."""
ORPHAN_GRACE_S = DRAIN_TIMEOUT_S + 5.0
"""How long a worker whose host died may drain before it exits regardless."""


__all__ = [
    "EXIT_CANNOT_WRITE",
    "HOP_LOG_ENV",
    "PROFILE_ENV",
    "RETRY_WITHOUT_POLICY",
    "EventHubPump",
    "HopLog",
    "ServiceBusPump",
    "make_pump",
    "run_worker",
    "serve",
]


def make_pump(
    spec: FunctionSpec,
    model: AppModel,
    broker: Broker,
    *,
    owner: str,
    writer: BrokerWriter | None = None,
    hop_log: HopLog | None = None,
) -> ServiceBusPump | EventHubPump:
    """The pump for ``spec``'s trigger; ``writer`` is shared with the process's publisher."""
    if spec.trigger_type == SERVICE_BUS:
        return ServiceBusPump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    if spec.trigger_type == EVENT_HUB:
        return EventHubPump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    raise ValueError(
        f"{spec.name}: devhost workers run queue and hub triggers, not {spec.trigger_type}"
    )


class CannotWrite(RuntimeError):
    """The worker's broker or store cannot be written."""


async def serve(
    function: str, workdir: Workdir, instance: str, *, model: AppModel | None = None
) -> None:
    """Run one instance of ``function`` until SIGTERM or SIGINT, then drain and shut down.

    ``model`` is the app as the worker template loaded it before forking this process; a
    worker started on its own loads it here. The instance builds its services (store, model
    client, telemetry) before its first receive, so its first message does not wait for them;
    a build that fails is only logged, and the first invocation tries again and fails there.
    """
    entered = time.time()
    for path in (workdir.broker, workdir.store):
        if not can_write(path):
            raise CannotWrite(f"{path} is read-only for this process")
    forked = model is not None
    if model is None:
        model = load_app(PROJECT_ROOT, os.environ)
    app_loaded = time.time()
    spec = model.by_name(function)
    broker = Broker(workdir.broker)
    writer = BrokerWriter(broker)
    bootstrap.configure(publisher=BrokerPublisher(broker, writer=writer))
    stop = _stop_on_signals()
    hop_log = HopLog.from_env(os.environ, function=function, instance=instance)
    try:
        await bootstrap.get_services()
    except Exception as exc:
        log.warning("services not built at start (%s: %s)", type(exc).__name__, exc)
    services_built = time.time()
    owner = f"{function}#{instance}@{os.getpid()}"
    pump = make_pump(spec, model, broker, owner=owner, writer=writer, hop_log=hop_log)
    if hop_log.enabled:
        hop_log.record(
            kind="startup",
            source=spec.source,
            forked=forked,
            decided=decided_at(os.environ),
            started=process_started_at(),
            entered=entered,
            appLoaded=app_loaded,
            servicesBuilt=services_built,
            ready=time.time(),
        )
    log.info("worker %s#%s started (pid %d)", function, instance, os.getpid())
    try:
        await pump.run(stop)
    finally:
        await _shut_down(spec, broker, writer, hop_log)


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set: the host's stop, or Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _shut_down(
    spec: FunctionSpec, broker: Broker, writer: BrokerWriter, hop_log: HopLog
) -> None:
    """Close the services, then the writer (its last group commit), then the broker."""
    await bootstrap.shutdown()
    await writer.close()
    stats = writer.stats
    hop_log.record(
        kind="writer",
        source=spec.source,
        operations=stats.operations,
        transactions=stats.transactions,
        largestBatch=stats.largest_batch,
    )
    hop_log.close()
    broker.close()


def run_worker(
    function: str,
    workdir: Path,
    instance: str,
    *,
    model: AppModel | None = None,
    forked: bool = False,
) -> None:
    """Run one instance in this process until it is stopped: logging, the lifeline to its
    parent (the host, or the worker template that forked it), then :func:`serve`. Raises
    ``SystemExit(EXIT_CANNOT_WRITE)`` when the file system refuses its writes."""
    logging.basicConfig(
        level=DevhostSettings.from_env().log_level,
        format=f"%(asctime)s {function}#{instance} %(levelname)s %(name)s: %(message)s",
        force=forked,  # a forked instance replaces the template's log format with its own
    )
    # SIGTERM when the parent dies, however it dies: the worker drains and exits as on a stop.
    die_with_parent(grace_s=ORPHAN_GRACE_S)
    profile_dir = DevhostSettings.from_env().profile
    profiler = cProfile.Profile() if profile_dir else None
    try:
        if profiler is not None:
            profiler.enable()
        asyncio.run(serve(function, Workdir(workdir), instance, model=model))
    except Exception as exc:
        problem = str(exc) if isinstance(exc, CannotWrite) else storage_problem(exc)
        if problem is None:
            raise
        log.error("cannot write to %s: %s", workdir, problem)  # one line, no traceback
        raise SystemExit(EXIT_CANNOT_WRITE) from None
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(Path(profile_dir) / f"{function}-{instance}-{os.getpid()}.prof")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devhost.worker")
    parser.add_argument("--function", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--instance", default="0")
    args = parser.parse_args(argv)
    run_worker(args.function, args.workdir, args.instance)


if __name__ == "__main__":
    main()
