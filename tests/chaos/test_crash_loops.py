"""Workers that cannot work stop the host with one message instead of being started forever.

- Workers that fail as they start (here: an ``azure`` package on their PYTHONPATH that raises
  on import) stop the host after ``CRASH_LOOP_EXITS`` failures in a row.
- A worker whose writes the file system refuses exits with ``EXIT_CANNOT_WRITE``; the host stops
  at once, with a ``cannot write in ...`` message. The refusal is real: the workers run under
  ``RLIMIT_FSIZE`` (SIGXFSZ ignored), so their writes fail as on a full disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devhost.host import CRASH_LOOP_EXITS, Host, HostError, SimulatorOptions
from devhost.scaler import ScaleLimits
from tests.support.devhost_run import post, request_lines, workdir

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

BROKEN = "raise ImportError('azure is broken here, on purpose')\n"


async def _run_until_it_fails(host: Host, prefix: str) -> None:
    """Start ``host``, give ingest work, wait until the host gives up; leaving raises why."""
    async with host:
        post(host, request_lines(5, prefix=prefix))
        await host.failed.wait()


async def test_workers_that_crash_as_they_start_stop_the_host(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "azure").mkdir(parents=True)
    (broken / "azure" / "__init__.py").write_text(BROKEN)
    where = workdir(tmp_path)
    limits = ScaleLimits(max_instances=2, max_step_up=2, polling_interval_s=0.2, cooldown_s=30)
    host = Host(
        where,
        simulator=SimulatorOptions(),
        http_port=0,
        limits=limits,
        environ={**os.environ, "PYTHONPATH": str(broken)},
    )
    with pytest.raises(HostError, match=f"ingest workers exited {CRASH_LOOP_EXITS} times in a row"):
        await _run_until_it_fails(host, "loop")
    # Each start wrote one traceback; the host stopped starting them at the limit.
    starts = (where.logs / "devhost.log").read_text().count("ImportError: azure is broken here")
    assert CRASH_LOOP_EXITS <= starts <= CRASH_LOOP_EXITS + limits.max_instances
    assert not host.lock.held


FULL_DISK = """
import resource, signal
# This process may write no file past its first byte: every write fails as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))
"""


async def test_a_worker_that_cannot_write_stops_the_host_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    # Python imports sitecustomize at start-up: only the workers (whose PYTHONPATH this is)
    # get the limit; the host and the simulator write as usual.
    (full / "sitecustomize.py").write_text(FULL_DISK)
    where = workdir(tmp_path)
    limits = ScaleLimits(max_instances=2, max_step_up=2, polling_interval_s=0.2, cooldown_s=30)
    host = Host(
        where,
        simulator=SimulatorOptions(),
        http_port=0,
        limits=limits,
        environ={**os.environ, "PYTHONPATH": str(full)},
    )
    with pytest.raises(HostError, match=f"cannot write in {where.root}: ingest worker"):
        await _run_until_it_fails(host, "full")
    exits = [r for r in caplog.records if "worker(s) exited" in r.getMessage()]
    assert len(exits) == 1  # the first worker that could not write was the last one started
    assert not host.lock.held
