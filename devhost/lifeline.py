"""Processes that die with their devhost, and a record of them that outlives a crashed host.

A devhost's worker and simulator processes must not outlive the supervisor that started them:
left running they keep draining queues, holding ports and writing to the workdir beside the next
host. Two mechanisms, either of which suffices:

- **parent-death signal** (Linux): a child calls :func:`die_with_parent` first thing, which asks
  the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to send it SIGTERM when its parent goes. The
  kernel ties this to the parent *thread* that forked the child: devhost spawns from its event
  loop's thread, which lives as long as the host does.
- **watchdog**: a daemon thread in the child compares ``os.getppid()`` with the pid the host
  passed in ``DEVHOST_PARENT_PID`` twice a second; once they differ (the child was re-parented)
  it sends itself SIGTERM, the same graceful stop as a host shutdown, and ends the process
  outright if it is still alive ``grace_s`` later. This works where prctl does not exist.

Both end in SIGTERM, so a worker drains its in-flight invocations exactly as when the host stops
it. A child started without ``DEVHOST_PARENT_PID`` (the simulator run by hand) gets neither.

The host also writes every child's pid, with its start time from ``/proc/<pid>/stat`` and the
boot id, to ``processes.json`` in the workdir (:class:`ProcessRecord`). A host taking the folder
over ends what is listed there and still running: the start time and boot id make sure a pid that
has since been reused by an unrelated process is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARENT_ENV = "DEVHOST_PARENT_PID"
"""The environment variable through which the host tells a child the pid it must outlive not."""
RECORD_FILE = "processes.json"
WATCH_EVERY_S = 0.5
EXIT_ORPHANED = 70
"""The exit status of a child the watchdog ended after its grace period."""
KILL_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


def child_environment(parent_pid: int | None = None) -> dict[str, str]:
    """What the host adds to a child's environment so that the child watches for its death."""
    return {PARENT_ENV: str(os.getpid() if parent_pid is None else parent_pid)}


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent thread exits; True
    when that is in place (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        result = libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(result == 0)


def die_with_parent(
    *, grace_s: float, environ: dict[str, str] | None = None, every_s: float = WATCH_EVERY_S
) -> threading.Thread | None:
    """Make this process stop (SIGTERM to itself) when the parent named in
    ``DEVHOST_PARENT_PID`` goes, and exit ``grace_s`` later if it has not stopped by then.

    Call it before the process installs its SIGTERM handler only if dying at once is acceptable
    until then; a parent that is already gone is detected immediately. Returns the watchdog
    thread, or None when no parent was named.
    """
    env = os.environ if environ is None else environ
    raw = env.get(PARENT_ENV)
    if not raw:
        return None
    try:
        parent = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a pid", PARENT_ENV, raw)
        return None
    set_parent_death_signal(signal.SIGTERM)
    # The parent may have died before the signal was armed: the watchdog's first look sees it.
    watchdog = threading.Thread(
        target=_watch, args=(parent, grace_s, every_s), name="devhost-lifeline", daemon=True
    )
    watchdog.start()
    return watchdog


def _watch(parent: int, grace_s: float, every_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    log.warning("devhost (pid %d) is gone; stopping", parent)
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(EXIT_ORPHANED)


# --------------------------------------------------------------------------- the record


def boot_id() -> str:
    """This boot's id (Linux), so that a record written before a reboot matches no process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``); None
    when there is no such process or no ``/proc``. A zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class RecordedProcess:
    """One child of a host: its pid, when it started, and what it is (for messages)."""

    pid: int
    started: int
    role: str

    def running(self) -> bool:
        """Still this very process (not a later one that reuses the pid)."""
        return start_time(self.pid) == self.started


class ProcessRecord:
    """``processes.json`` in a workdir: the children of the host that holds the folder."""

    def __init__(self, root: Path) -> None:
        self.path = root / RECORD_FILE

    def write(self, processes: Iterable[tuple[int, str]]) -> None:
        """Record ``(pid, role)`` pairs, replacing what was there (atomically)."""
        entries = []
        for pid, role in processes:
            started = start_time(pid)
            if started is not None:
                entries.append({"pid": pid, "started": started, "role": role})
        document = {"host": os.getpid(), "bootId": boot_id(), "processes": entries}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
        tmp.replace(self.path)

    def read(self) -> list[RecordedProcess]:
        """The recorded processes of this boot; nothing when there is no readable record."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("bootId") != boot_id():
                return []
            return [
                RecordedProcess(int(p["pid"]), int(p["started"]), str(p.get("role", "?")))
                for p in document.get("processes", [])
            ]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return []

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def end_stale(self, *, timeout_s: float = 10.0) -> list[RecordedProcess]:
        """End the recorded processes that still run: SIGTERM, then SIGKILL for those still
        there after ``timeout_s``. Only for a workdir whose lock is held (their host is gone).
        Returns the processes that were running; the record is removed."""
        stale = [p for p in self.read() if p.pid != os.getpid() and p.running()]
        for process in stale:
            log.warning(
                "ending %s (pid %d), left running by an earlier devhost in %s",
                process.role,
                process.pid,
                self.path.parent,
            )
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(p.running() for p in stale) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in stale:
            if process.running():
                _signal(process, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while any(p.running() for p in stale) and time.monotonic() < deadline:
            time.sleep(0.01)
        for process in stale:
            if process.running():  # another user's process, or stuck in the kernel
                log.warning("could not end %s (pid %d)", process.role, process.pid)
        self.clear()
        return stale


def _signal(process: RecordedProcess, signum: int) -> None:
    # Checked again just before the signal: the pid must still be the recorded process.
    if process.running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signum)
