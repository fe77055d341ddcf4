"""No orphans: a devhost's workers and simulator die with it, and a new host ends leftovers.

The first test runs ``python -m devhost run`` as a user would, with work waiting so that
workers are running, SIGKILLs the supervisor alone and watches every process it had recorded
(the simulator and the workers) exit. The second leaves processes recorded in a workdir, as a
host that could not take its children with it would, and starts a new host there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devhost import cli
from devhost.environment import PROJECT_ROOT
from devhost.host import Host, SimulatorOptions
from devhost.lifeline import ProcessRecord, RecordedProcess, start_time
from tests.support.devhost_run import request_lines, workdir

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def eventually(check: Callable[[], bool], *, attempts: int, every_s: float = 0.1) -> bool:
    """Poll ``check`` a bounded number of times; True as soon as it holds."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(every_s)
    return check()


def test_killing_the_supervisor_takes_its_workers_and_simulator_along(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"\n".join(request_lines(40, prefix="orphan")) + b"\n")
    # Queued before the host starts: it scales ingest and then the agents up at once.
    cli.main(["--workdir", str(where.root), "send", str(requests)])
    assert "sent 40 requests" in capsys.readouterr().out
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devhost",
            "--workdir",
            str(where.root),
            "run",
            "--port",
            "0",
            "--latency-ms",
            "1500",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record = ProcessRecord(where.root)
    children: list[RecordedProcess] = []
    try:

        def workers_running() -> bool:
            children[:] = [p for p in record.read() if p.running()]
            roles = {p.role.split("#")[0] for p in children}
            return {"simulator", "template", "ingest", "intent_agent"} <= roles

        assert eventually(workers_running, attempts=900), [p.role for p in children]
        supervisor.send_signal(signal.SIGKILL)
        assert supervisor.wait(timeout=30) == -signal.SIGKILL

        assert eventually(lambda: not any(p.running() for p in children), attempts=900), [
            p.role for p in children if p.running()
        ]
    finally:
        supervisor.kill()
        supervisor.wait()
        for process in children:
            if process.running():
                os.kill(process.pid, signal.SIGKILL)


SLEEPER = "import time; print('up', flush=True); time.sleep(300)"


def _sleeper() -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "up"
    return process


async def test_a_new_host_ends_the_processes_an_earlier_host_left_running(tmp_path: Path) -> None:
    where = workdir(tmp_path).create()
    left_over = _sleeper()  # a worker whose host died without it
    unrelated = _sleeper()  # a process that reuses a recorded pid
    try:
        record = ProcessRecord(where.root)
        record.write([(left_over.pid, "intent_agent#0"), (unrelated.pid, "simulator")])
        document = json.loads(record.path.read_text())
        document["processes"][1]["started"] = (start_time(unrelated.pid) or 0) - 1
        record.path.write_text(json.dumps(document))

        async with Host(where, simulator=SimulatorOptions(), http_port=0) as host:
            # Ended before the host started anything: SIGTERM, as a host stop would send.
            assert left_over.poll() == -signal.SIGTERM
            assert unrelated.poll() is None
            # The record now lists this host's own simulator and worker template, and only them.
            recorded = {p.pid: p.role for p in record.read()}
            assert host._sim_process is not None
            assert host.template is not None
            assert host.template.pid is not None
            assert recorded == {
                host._sim_process.pid: "simulator",
                host.template.pid: "template",
            }
        assert not record.path.exists()  # a host that stopped leaves nothing running
    finally:
        for process in (left_over, unrelated):
            process.kill()
            process.wait()
