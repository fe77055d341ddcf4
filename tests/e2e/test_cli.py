"""The devhost command line as a user drives it: send and follow, list, show, and its refusals."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from devhost import cli
from devhost.environment import PROJECT_ROOT, Workdir, running_host
from devhost.host import LOCK_FILE, Host, HostError, SimulatorOptions, WorkdirLock
from tests.support.devhost_run import workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MIXED = [
    {
        "customerId": "cli-1",
        "text": "Where is my order ORD-1?",
        "channel": "chat",
        "idempotencyKey": "k-1",
    },
    {
        "customerId": "cli-1",
        "text": "Where is my order ORD-1?",
        "channel": "chat",
        "idempotencyKey": "k-1",
    },
    {
        "customerId": "cli-2",
        "text": "Refund order ORD-2 please, it arrived broken.",
        "channel": "email",
    },
    {"customerId": "cli-3", "text": "hello", "channel": "carrier-pigeon"},
]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from devhost.environment import Workdir
from devhost.host import WorkdirLock
WorkdirLock(Workdir(Path(sys.argv[1]))).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _main(root: Path, *args: str) -> int:
    return cli.main(["--workdir", str(root), *args])


async def test_send_wait_follows_every_line_to_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    lines = [json.dumps(r) for r in MIXED] + ["{not json", ""]
    requests = _write(tmp_path / "mixed.jsonl", lines)
    async with Host(where, simulator=SimulatorOptions(tpm=1_000_000), http_port=0):
        code = await asyncio.to_thread(
            _main, where.root, "send", "--wait", "--timeout", "90", str(requests)
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert "sent 5 requests" in out  # the blank line is not a request
        # Five events, one repeated idempotency key: four records, each final and listed.
        assert "answered" in out or "escalated" in out
        assert out.count("rejected") >= 2
        assert "channel must be one of" in out
        assert "not valid JSON" in out

        code = await asyncio.to_thread(
            _main, where.root, "conversations", "--status", "rejected", "--limit", "10"
        )
        listing = capsys.readouterr().out
        assert code == 0
        rejected_ids = [w for w in listing.split() if w.startswith("r-")]
        assert len(rejected_ids) == 2

        assert await asyncio.to_thread(_main, where.root, "conversations") == 0
        everything = capsys.readouterr().out
        started = {w for w in everything.split() if w.startswith("c-")}
        assert len(started) == 2  # k-1 once, and the refund

        assert await asyncio.to_thread(_main, where.root, "show", rejected_ids[0]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["conversationId"] == rejected_ids[0]
        assert shown["status"] == "rejected"
        assert shown["outcome"]["reason"]

        assert await asyncio.to_thread(_main, where.root, "show", "c-nothing-here") == 1
        assert "no record" in capsys.readouterr().out


def test_send_refuses_what_it_cannot_send_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dh"
    assert _main(root, "send", str(tmp_path / "missing.jsonl")) == 2
    assert "cannot read" in capsys.readouterr().out

    assert _main(root, "send", str(_write(tmp_path / "blank.jsonl", ["", "  "]))) == 1
    assert "no requests to send" in capsys.readouterr().out

    big = json.dumps({"customerId": "c-1", "text": "x" * (1024 * 1024)})
    ok = json.dumps({"customerId": "c-2", "text": "Where is ORD-9?", "channel": "chat"})
    code = _main(root, "send", str(_write(tmp_path / "big.jsonl", [big, ok])))
    out = capsys.readouterr().out
    assert code == 1  # one line was not sent
    assert "line 1 is" in out
    assert "not sent" in out
    assert "sent 1 requests" in out
    assert "no devhost is running" in out  # it waits in the hub until one starts


async def test_a_second_host_on_the_same_folder_is_refused_and_state_is_cleared(
    tmp_path: Path,
) -> None:
    where = workdir(tmp_path)
    async with Host(where, simulator=SimulatorOptions(), http_port=0) as host:
        assert running_host(where) is not None  # written before start returns
        # Without the state file, the folder's lock alone refuses the second host.
        where.state.unlink()
        with pytest.raises(HostError, match=f"pid {os.getpid()}.*already running"):
            async with Host(where, simulator=SimulatorOptions(), http_port=0):
                pass
        # The refused host stopped nothing of the first: it keeps scaling and serving.
        for _ in range(50):
            if running_host(where) is not None:
                break
            await asyncio.sleep(0.1)
        state = running_host(where)
        assert state is not None
        assert state["http"].endswith(f":{host.http_port}/api")
        assert host.lock.held
    assert running_host(where) is None
    assert not where.state.exists()
    assert not host.lock.held

    # A host in another process holds the folder: refused, naming that process.
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_LOCK,
        str(where.root),
        stdout=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        with pytest.raises(HostError, match=f"pid {holder.pid}.*already running"):
            async with Host(where, simulator=SimulatorOptions(), http_port=0):
                pass
    finally:
        holder.kill()
        await holder.wait()
    # The kernel drops a dead holder's lock: the folder is free again at once.
    with WorkdirLock(where) as lock:
        assert lock.held


def test_demo_refuses_to_clear_a_folder_whose_demo_is_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dh"
    demo = Workdir(root / "demo")
    with WorkdirLock(demo):  # what a running demo's host holds
        (demo.root / "broker.sqlite3").write_bytes(b"live")
        assert _main(root, "demo") == 2
        assert "already running" in capsys.readouterr().out
        assert (demo.root / "broker.sqlite3").read_bytes() == b"live"


def test_clearing_a_workdir_needs_its_lock_and_keeps_the_lock_file(tmp_path: Path) -> None:
    where = workdir(tmp_path).create()
    (where.logs / "devhost.log").write_text("old run")
    where.broker.write_bytes(b"old")
    lock = WorkdirLock(where)
    with pytest.raises(RuntimeError, match="needs its host lock"):
        lock.clear_workdir()
    assert where.broker.exists()

    with lock:
        lock.clear_workdir()
        assert [p.name for p in where.root.iterdir()] == [LOCK_FILE]
        with pytest.raises(HostError, match=f"pid {os.getpid()}"):
            WorkdirLock(where).acquire()


async def test_a_host_that_cannot_bind_its_port_stops_what_it_started(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    host = Host(workdir(tmp_path), simulator=SimulatorOptions(), http_port=port)
    try:
        with pytest.raises(HostError, match="pick another with --port"):
            async with host:
                pass
    finally:
        taken.close()
    assert host.simulator_url is not None
    sim_port = int(host.simulator_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sim_port), timeout=1).close()
