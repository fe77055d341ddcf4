"""When a worker instance was decided and started, for the scaler's start-up timings.

Shared by the host (which decides), the worker template (which forks) and the worker (which
reports both times), below all three so that none imports another for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from devhost.lifeline import start_time

DECIDED_AT_ENV = "DEVHOST_DECIDED_AT"
"""Epoch seconds at which the scaler decided to start an instance (for its start-up timings)."""


def decided_at(environ: Mapping[str, str]) -> float | None:
    """The :data:`DECIDED_AT_ENV` time this process was started with; None when unset or not
    a number (a worker started by hand)."""
    text = environ.get(DECIDED_AT_ENV)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def process_started_at(pid: int | None = None) -> float | None:
    """When a process started, in epoch seconds (``/proc``; to the clock tick), or None."""
    ticks = start_time(os.getpid() if pid is None else pid)
    if ticks is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return None
