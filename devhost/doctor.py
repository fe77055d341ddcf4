"""``devhost doctor`` and ``devhost reset``: what is wrong with a workdir, and a way out.

A devhost relies on four SQLite files in its workdir: the broker, the store, the quota ledger
and the blob receipts. ``doctor`` runs ``PRAGMA quick_check`` on each (read-only: it changes
nothing and is safe beside a running host), says whether the folder can be written, and lists
processes an earlier host left running. The host runs the same check before it starts and
refuses a damaged file (:func:`damaged`, :func:`refusal`).

``reset --keep-backup`` moves the state files (each with its ``-wal`` and ``-shm``) into
``backups/<UTC time>/`` inside the workdir and leaves the inbox and the logs; without
``--keep-backup`` it deletes them. Either way it first takes the workdir's host lock, so it is
refused while a host runs there, and ends processes an earlier host left running, so nothing
writes to a file while it moves.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devhost.environment import Workdir, running_host
from devhost.lifeline import ProcessRecord
from devhost.workdir_lock import WorkdirLock
from shared.adapters.local.sqlite import can_write, quick_check

STATE_FILES = ("broker.sqlite3", "store.sqlite3", "quota.sqlite3", "receipts.sqlite3")
"""The SQLite files a devhost keeps in its workdir, checked at start and moved by ``reset``."""
SIDE_FILES = ("-wal", "-shm")
BACKUPS = "backups"


@dataclass(frozen=True)
class FileReport:
    """One state file: where, how large, and what ``quick_check`` found (nothing when intact)."""

    path: Path
    size: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.size is not None


def state_files(workdir: Workdir) -> list[Path]:
    return [workdir.root / name for name in STATE_FILES]


def check(workdir: Workdir, *, unreadable_is_a_problem: bool = True) -> list[FileReport]:
    """``quick_check`` of every state file of ``workdir`` (missing files are reported as such).

    A file that cannot be read at all (I/O error, permissions) is a problem in the report, or,
    with ``unreadable_is_a_problem=False``, raises ``sqlite3.OperationalError``.
    """
    reports = []
    for path in state_files(workdir):
        try:
            size: int | None = path.stat().st_size
        except FileNotFoundError:
            reports.append(FileReport(path, None))
            continue
        try:
            problems = quick_check(path)
        except sqlite3.OperationalError as exc:
            if not unreadable_is_a_problem:
                raise
            problems = [f"cannot be read: {exc}"]
        reports.append(FileReport(path, size, problems))
    return reports


def damaged(workdir: Workdir) -> list[FileReport]:
    """The state files of ``workdir`` that fail ``quick_check``; raises when one cannot be
    read at all (the caller reports why the file system refuses)."""
    return [r for r in check(workdir, unreadable_is_a_problem=False) if r.problems]


def refusal(workdir: Workdir, reports: list[FileReport]) -> str:
    """Why a host does not start on damaged files, and the two commands that help."""
    names = ", ".join(str(r.path) for r in reports)
    first = reports[0].problems[0]
    prefix = f"python -m devhost --workdir {workdir.root}"
    return (
        f"{names} {'is' if len(reports) == 1 else 'are'} damaged ({first}); nothing was started. "
        f"See every problem with: {prefix} doctor; move the state files aside and start afresh "
        f"with: {prefix} reset --keep-backup"
    )


def doctor(workdir: Workdir, say: Callable[[str], None]) -> int:
    """Print what is wrong with ``workdir``; 0 when nothing is, 1 otherwise."""
    if not workdir.root.is_dir():
        say(f"no devhost state in {workdir.root}")
        return 0
    problems = 0
    for report in check(workdir):
        if not report.exists:
            say(f"{report.path}: absent (made when a host starts)")
        elif report.problems:
            problems += 1
            say(f"{report.path}: DAMAGED ({report.size:,} bytes)")
            for line in report.problems:
                say(f"  {line}")
        else:
            say(f"{report.path}: ok ({report.size:,} bytes)")
    if not can_write(workdir.root / STATE_FILES[0]):
        problems += 1
        say(
            f"{workdir.root}: not writable by this user; a host cannot run here "
            "(status, conversations, show and dlq list still work)"
        )
    host = running_host(workdir)
    if host is not None:
        say(f"a devhost is running here: pid {host.get('pid')}, HTTP {host.get('http')}")
    else:
        left = [p for p in ProcessRecord(workdir.root).read() if p.running()]
        for process in left:
            say(
                f"{process.role} (pid {process.pid}) was left running by an earlier devhost; "
                "the next start (or reset) ends it"
            )
    if problems:
        say(
            f"{problems} problem(s). To start afresh with the damaged files kept aside: "
            f"python -m devhost --workdir {workdir.root} reset --keep-backup"
        )
        return 1
    say("no problems found")
    return 0


@dataclass(frozen=True)
class Reset:
    """What ``reset`` did: the files it moved or deleted, and where it kept them (if it did)."""

    files: list[Path]
    backup: Path | None


def reset(workdir: Workdir, *, keep_backup: bool, now: datetime | None = None) -> Reset:
    """Move (``keep_backup``) or delete the state files of ``workdir``. Raises ``HostError``
    while a host holds the workdir."""
    with WorkdirLock(workdir):  # refused while a host runs; ends what a dead one left running
        present = [
            Path(f"{path}{suffix}")
            for path in state_files(workdir)
            for suffix in (*SIDE_FILES, "")  # the logs first: a lone log must not meet a new file
            if Path(f"{path}{suffix}").exists()
        ]
        if not present or not keep_backup:
            for path in present:
                path.unlink()
            return Reset(present, None)
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
        backup = workdir.root / BACKUPS / stamp
        backup.mkdir(parents=True)
        for path in present:
            os.replace(path, backup / path.name)
        return Reset(present, backup)


def reset_command(workdir: Workdir, *, keep_backup: bool, say: Callable[[str], None]) -> int:
    """``devhost reset``: 0 after moving or deleting the state files (or finding none)."""
    done = reset(workdir, keep_backup=keep_backup)
    if not done.files:
        say(f"no state files in {workdir.root}; nothing to do")
    elif done.backup is not None:
        say(f"moved {len(done.files)} state files of {workdir.root} to {done.backup}")
    else:
        say(f"deleted {len(done.files)} state files of {workdir.root}")
    return 0
