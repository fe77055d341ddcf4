"""devhost.lifeline: children that stop when their parent dies, and the record of them.

The parent-death tests use three real generations: this test starts a "parent" process, which
starts a "child" armed with one mechanism only (the kernel's parent-death signal, or the
watchdog thread); the test SIGKILLs the parent and waits for the child to leave its mark.
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

from devhost.lifeline import (
    PARENT_ENV,
    ProcessRecord,
    RecordedProcess,
    boot_id,
    die_with_parent,
    start_time,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CHILD = """
import os, signal, sys, threading, time
from pathlib import Path
from devhost import lifeline

mark = Path(sys.argv[2])
def on_term(signum, frame):
    mark.write_text("SIGTERM")
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
if sys.argv[1] == "pdeathsig":
    assert lifeline.set_parent_death_signal()
else:  # the watchdog alone, polling fast
    parent = int(os.environ[lifeline.PARENT_ENV])
    threading.Thread(target=lifeline._watch, args=(parent, 30.0, 0.02), daemon=True).start()
print("armed", flush=True)
time.sleep(120)
"""

PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
    env={**os.environ, "DEVHOST_PARENT_PID": str(os.getpid())},
    stdout=subprocess.PIPE, text=True,
)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""


def wait_until(check: Callable[[], bool], *, attempts: int, every_s: float) -> bool:
    """Poll ``check`` a bounded number of times; True as soon as it holds."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(every_s)
    return check()


def _orphan_reacts(tmp_path: Path, mechanism: str) -> str:
    """Kill a parent whose child is armed with ``mechanism``; return what the child wrote."""
    mark = tmp_path / f"{mechanism}.mark"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mechanism, str(mark)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        child = RecordedProcess(child_pid, start_time(child_pid) or -1, "child")
        assert child.running()
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not child.running(), attempts=600, every_s=0.05)
        return mark.read_text()
    finally:
        parent.kill()
        parent.wait()


def test_the_kernel_signals_a_child_whose_parent_dies(tmp_path: Path) -> None:
    assert _orphan_reacts(tmp_path, "pdeathsig") == "SIGTERM"


def test_the_watchdog_signals_a_child_whose_parent_dies(tmp_path: Path) -> None:
    assert _orphan_reacts(tmp_path, "watchdog") == "SIGTERM"


def test_no_parent_named_means_no_watchdog() -> None:
    assert die_with_parent(grace_s=1.0, environ={}) is None
    assert die_with_parent(grace_s=1.0, environ={PARENT_ENV: "not-a-pid"}) is None


def test_start_time_tells_a_live_process_from_a_gone_or_zombie_one() -> None:
    assert start_time(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = child.pid
    # Exited but not yet reaped: a zombie, which counts as gone.
    assert wait_until(lambda: start_time(pid) is None, attempts=400, every_s=0.01)
    child.wait()
    assert start_time(pid) is None


def test_the_record_ends_only_the_processes_it_recorded(tmp_path: Path) -> None:
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = ProcessRecord(tmp_path)
        record.write([(stale.pid, "ingest#0"), (reused.pid, "simulator")])
        document = json.loads(record.path.read_text())
        # The second pid now belongs to a process that started later than the recorded one.
        document["processes"][1]["started"] -= 1
        record.path.write_text(json.dumps(document))

        ended = record.end_stale(timeout_s=30)

        assert [p.pid for p in ended] == [stale.pid]
        assert stale.wait(timeout=30) == -signal.SIGTERM
        assert reused.poll() is None
        assert not record.path.exists()
    finally:
        for process in (stale, reused):
            process.kill()
            process.wait()


def test_a_record_from_another_boot_lists_nothing(tmp_path: Path) -> None:
    record = ProcessRecord(tmp_path)
    record.path.write_text(
        json.dumps(
            {
                "bootId": "another-boot",
                "processes": [{"pid": os.getpid(), "started": 1, "role": "x"}],
            }
        )
    )
    assert boot_id() != "another-boot"
    assert record.read() == []
    record.path.write_text("{not json")
    assert record.read() == []


def test_a_stubborn_process_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline().strip() == "ready"
        record = ProcessRecord(tmp_path)
        record.write([(stubborn.pid, "worker")])
        assert [p.pid for p in record.end_stale(timeout_s=0.2)] == [stubborn.pid]
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()
