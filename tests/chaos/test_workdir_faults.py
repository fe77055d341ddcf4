"""Start-up checks what it relies on: damaged files, read-only workdirs and full disks.

- A garbled page in a real store file: ``run`` refuses with one ``devhost:`` line naming the
  file and the way out, ``doctor`` reports it, ``reset --keep-backup`` moves it aside (kept, byte
  for byte) and the next host starts.
- A read-only workdir: the CLI runs as another user (``setpriv`` to ``nobody`` when the tests
  run as root, whom file modes do not stop; a ``chmod`` otherwise). ``status``, ``conversations``,
  ``show`` and ``dlq list`` work; ``run`` refuses with one ``devhost:`` line, no traceback.
- A full disk: ``run`` under ``RLIMIT_FSIZE`` (SIGXFSZ ignored), so writing past a few KiB fails
  (short writes, then ``EFBIG``) the way a full file system fails them; one ``devhost:`` line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devhost import cli
from devhost.broker import Broker
from devhost.environment import PROJECT_ROOT, Workdir
from devhost.host import Host, SimulatorOptions
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.bootstrap import load_settings
from shared.domain.conversation import Conversation
from shared.domain.messages import Stage
from shared.domain.routing import Outcome
from tests.conftest import TEST_ENV
from tests.support.conversations import ended_by_one_stage
from tests.support.devhost_run import workdir

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

PARTITION_KEYS = load_settings({**TEST_ENV}).container_partition_keys
CONVERSATIONS = "conversations"


def _answered(cid: str) -> Conversation:
    """A conversation answered at its first draft, built the way the pipeline builds one."""
    return ended_by_one_stage(
        cid,
        stage=Stage.RESPONSE,
        outcome=Outcome.ANSWERED,
        result={"reply": f"Your order {cid} ships today."},
        now=datetime.now(UTC),
    )


def _fill(where: Workdir, conversations: int = 300) -> list[str]:
    """A real store and broker: ``conversations`` answered records, one dead-lettered message."""
    where.create()
    ids = [f"c-{n:04d}" for n in range(conversations)]

    async def write() -> None:
        store = SqliteDocumentStore(str(where.store), partition_keys=PARTITION_KEYS)
        try:
            for cid in ids:
                await store.upsert(CONVERSATIONS, _answered(cid).to_doc())
        finally:
            await store.close()

    asyncio.run(write())
    with Broker(where.broker) as broker:
        broker.ensure_queue("intent", max_delivery_count=1)
        broker.send("intent", b"{}", message_id="m-dead")
        (message,) = broker.receive("intent")
        broker.dead_letter("intent", message.lock_token, reason="TestReason", description="why")
    # Closed cleanly: every write is folded into the main files, no -wal is left.
    assert not Path(f"{where.store}-wal").exists()
    return ids


def _garble_page(path: Path, page: int) -> bytes:
    """Overwrite page ``page`` (1-based) of a database file with junk; return the new bytes."""
    with sqlite3.connect(path) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) >= page * page_size, "the file is too small to garble that page"
    start = (page - 1) * page_size
    data[start : start + page_size] = (b"\xde\xad\xbe\xef" * page_size)[:page_size]
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_store_refuses_start_until_reset_moves_it_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    _fill(where)
    garbled = _garble_page(where.store, 2)
    root = str(where.root)

    assert cli.main(["--workdir", root, "run", "--port", "0"]) == 2
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith(f"devhost: {where.store} is damaged"), out
    assert "doctor" in out
    assert "reset --keep-backup" in out
    assert "Traceback" not in out
    assert not where.state.exists()  # nothing started
    assert not (where.root / "processes.json").exists()

    assert cli.main(["--workdir", root, "doctor"]) == 1
    report = capsys.readouterr().out
    assert f"{where.store}: DAMAGED" in report
    assert f"{where.broker}: ok" in report

    assert cli.main(["--workdir", root, "reset", "--keep-backup"]) == 0
    moved = capsys.readouterr().out
    assert "moved" in moved
    (backup,) = (where.root / "backups").iterdir()
    assert hashlib.sha256((backup / "store.sqlite3").read_bytes()).digest() == (
        hashlib.sha256(garbled).digest()
    )
    assert (backup / "broker.sqlite3").exists()
    assert not where.store.exists()
    assert not where.broker.exists()

    async def start_and_stop() -> bool:
        async with Host(where, simulator=SimulatorOptions(), http_port=0) as host:
            return host.broker is not None and where.state.exists()

    assert asyncio.run(start_and_stop())
    assert cli.main(["--workdir", root, "doctor"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert (backup / "store.sqlite3").exists()  # the next start kept the backup


def test_reset_is_refused_while_a_host_holds_the_workdir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = workdir(tmp_path)
    _fill(where, conversations=3)

    async def reset_beside_a_host() -> int:
        async with Host(where, simulator=SimulatorOptions(), http_port=0):
            return await asyncio.to_thread(
                cli.main, ["--workdir", str(where.root), "reset", "--keep-backup"]
            )

    assert asyncio.run(reset_beside_a_host()) == 2
    out = capsys.readouterr().out
    assert out.startswith("devhost: a devhost (")
    assert "already running" in out
    assert where.store.exists()
    assert not (where.root / "backups").exists()


# --------------------------------------------------------------------------- read-only


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can read (pytest's own tmp folders are private to this user)."""
    path = Path(tempfile.mkdtemp(prefix="dh-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for folder in [path, *path.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)  # a test may have made it read-only
        shutil.rmtree(path, ignore_errors=True)


def _as_reader(where: Workdir, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``where`` as a user who cannot write there."""
    command = [sys.executable, "-m", "devhost", "--workdir", str(where.root), *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no user to drop to")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {**os.environ, "COLUMNS": "200", "HOME": "/tmp"}
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_read_only_commands_work_on_a_read_only_workdir_and_run_refuses(
    shared_dir: Path,
) -> None:
    where = Workdir(shared_dir / "dh")
    ids = _fill(where, conversations=5)
    if os.geteuid() != 0:
        where.root.chmod(0o555)
    for path in where.root.iterdir():
        assert not path.name.endswith(("-wal", "-shm")), path
    before = {p.name: p.stat().st_mtime_ns for p in where.root.iterdir()}

    status = _as_reader(where, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "intent" in status.stdout

    listing = _as_reader(where, "conversations", "--limit", "10")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert all(cid in listing.stdout for cid in ids)

    shown = _as_reader(where, "show", ids[0])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f'"conversationId": "{ids[0]}"' in shown.stdout

    dead = _as_reader(where, "dlq", "list")
    assert dead.returncode == 0, dead.stdout + dead.stderr
    assert "m-dead" in dead.stdout
    assert "TestReason" in dead.stdout

    requests = where.root.parent / "requests.jsonl"
    requests.write_text('{"customerId": "c-1", "text": "Where is my order ORD-1?"}\n')
    for writing in (("run", "--port", "0"), ("send", str(requests)), ("dlq", "replay")):
        refused = _as_reader(where, *writing)
        assert refused.returncode == 2, writing
        assert refused.stdout.startswith(f"devhost: cannot write in {where.root}"), refused.stdout
        assert "Traceback" not in refused.stdout + refused.stderr

    doctor = _as_reader(where, "doctor")
    assert doctor.returncode == 1
    assert "not writable" in doctor.stdout

    for result in (status, listing, shown, dead):
        assert "Traceback" not in result.stderr, result.stderr
    # Nothing in the folder was created or written by any of it.
    assert {p.name: p.stat().st_mtime_ns for p in where.root.iterdir()} == before


# --------------------------------------------------------------------------- disk full

FILL_LIMIT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.executable, [sys.executable, "-m", "devhost", *sys.argv[2:]])
"""


def test_a_full_disk_stops_run_with_one_clear_line(tmp_path: Path) -> None:
    where = workdir(tmp_path)
    _fill(where, conversations=50)
    env = {
        **os.environ,
        # No simulator: the disk refuses the host's own first writes, to the broker.
        "DEVHOST_LLM": "external",
        "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9",
        "AZURE_OPENAI_API_KEY": "test-only-key",
    }
    result = subprocess.run(
        [sys.executable, "-c", FILL_LIMIT, "4096", "--workdir", str(where.root), "run"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout.strip()
    # SQLite reports a short write as a full disk and EFBIG as a failed write; either says so.
    assert out.startswith(f"devhost: cannot write in {where.root}: "), out
    assert "the disk is full" in out or "a write to the disk failed (is it full?)" in out, out
    assert len(out.splitlines()) <= 3  # one message (wrapped at most), nothing else
    assert "Traceback" not in result.stdout + result.stderr
    assert not where.state.exists()


def test_a_reader_sees_the_writes_still_in_the_log_of_a_live_or_crashed_host(
    shared_dir: Path,
) -> None:
    """With ``-wal`` and ``-shm`` beside the store (a host running, or killed), a reader who
    cannot write reads through the existing index and sees every committed write."""
    where = Workdir(shared_dir / "dh")
    _fill(where, conversations=2)
    writer = sqlite3.connect(where.store, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")  # the write stays in the log
        writer.execute(
            "INSERT INTO documents (container, pk, id, body, etag, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (
                CONVERSATIONS,
                "c-in-the-log",
                "c-in-the-log",
                '{"id": "c-in-the-log", "conversationId": "c-in-the-log", "status": "answered"}',
                '"e"',
                2_000_000_000,
            ),
        )
        assert Path(f"{where.store}-wal").stat().st_size > 0
        assert Path(f"{where.store}-shm").exists()
        if os.geteuid() != 0:
            where.root.chmod(0o555)  # after the writer made its files, as a host would have
        shown = _as_reader(where, "show", "c-in-the-log")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert '"status": "answered"' in shown.stdout
    finally:
        writer.close()
