"""One host per workdir: the exclusive lock a host holds on its folder while it runs.

Here rather than in ``devhost.host`` because ``devhost.doctor`` takes the same lock to reset a
workdir, and the host imports the doctor for its start check.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from devhost.environment import Workdir, running_host
from devhost.lifeline import ProcessRecord
from shared.adapters.local.sqlite import storage_problem


class HostError(RuntimeError):
    """devhost cannot start here (another host owns the folder, the port is taken, a state file
    is damaged, the folder cannot be written), or it stopped because it could not go on."""


def cannot_write(root: Path, problem: str) -> str:
    """The message for a workdir the file system refuses to write."""
    return (
        f"cannot write in {root}: {problem}. devhost needs a writable workdir with free space; "
        "read-only commands (status, conversations, show, dlq list) still work there"
    )


LOCK_FILE = "host.lock"
"""The file in a workdir whose exclusive ``flock`` its host holds while it runs."""


class WorkdirLock:
    """One host per workdir: an exclusive, non-blocking ``flock`` on ``root / host.lock``.

    The kernel drops the lock when its holder exits, however it exits, so a crashed host never
    leaves the folder locked. The holder writes its pid into the file for the refusal message.
    A lock is held by one open file, so a second ``WorkdirLock`` on the same folder is refused
    even in the same process; ``acquire`` on the object that already holds it does nothing.
    """

    def __init__(self, workdir: Workdir) -> None:
        self.workdir = workdir
        self.path = workdir.root / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        """Take the lock, or raise ``HostError`` naming the host that holds it."""
        if self._fd is not None:
            return self
        try:
            self.workdir.root.mkdir(parents=True, exist_ok=True)
            # Not inherited by child processes (PEP 446), so workers never keep the folder locked.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HostError(
                cannot_write(self.workdir.root, storage_problem(exc) or str(exc))
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(self.workdir, fd)
            os.close(fd)
            raise HostError(
                f"a devhost ({holder}) is already running in {self.workdir.root}; "
                "stop it, or give this one its own --workdir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            # The folder is ours: what an earlier host left running there must not write on.
            ProcessRecord(self.workdir.root).end_stale()
        except OSError as exc:
            os.close(fd)
            raise HostError(
                cannot_write(self.workdir.root, storage_problem(exc) or str(exc))
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the file releases it); does nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def clear_workdir(self) -> None:
        """Delete everything in the workdir but the lock file itself; only while held.

        The lock file stays so that every process keeps locking the same file: a new one made
        while this is held would be a second, free lock.
        """
        if self._fd is None:
            raise RuntimeError(f"clearing {self.workdir.root} needs its host lock")
        for entry in self.workdir.root.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _lock_holder(workdir: Workdir, fd: int) -> str:
    """Who holds a workdir's lock, as far as known: the live host's state, else the pid the
    holder wrote into the lock file."""
    state = running_host(workdir)
    if state is not None:
        return f"pid {state.get('pid')}, HTTP {state.get('http')}"
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(os.pread(fd, 32, 0).decode().strip())}"
    return "pid unknown"
