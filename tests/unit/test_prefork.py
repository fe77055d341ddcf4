"""devhost.prefork: the worker template forks instances of the app it imported once, reports
their exits, refuses to fork once a thread runs, and the host's handles signal only the
process they were made for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devhost.environment import PROJECT_ROOT, Workdir, app_settings
from devhost.lifeline import child_environment
from devhost.prefork import fork_problem, prefork_enabled
from devhost.prefork_host import ForkedWorker, Template, TemplateUnavailable
from devhost.worker import EXIT_CANNOT_WRITE

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks, reads /proc"),
    pytest.mark.timeout(120),
]


def template_env(root: Path) -> dict[str, str]:
    settings = app_settings(Workdir(root), simulator_url="http://127.0.0.1:9", environ={})
    return {**os.environ, **settings, **child_environment()}


async def test_an_instance_forked_from_the_template_reports_its_exit_status(
    tmp_path: Path,
) -> None:
    # The instance's workdir does not exist, so it cannot write there and exits with the
    # status that tells the host so: that status must travel back through the template.
    missing = tmp_path / "not-made"
    template = Template(missing, env=template_env(missing), log_file=None, cwd=PROJECT_ROOT)
    await template.start()
    try:
        assert await template.ready()
        worker = await template.fork("intent_agent", 0, decided_at=0.0)
        assert worker.pid not in (os.getpid(), template.pid)
        assert await worker.wait() == EXIT_CANNOT_WRITE
        assert template.forks == 1
        # And the template forks again after an instance has gone.
        again = await template.fork("critic_agent", 1, decided_at=0.0)
        assert again.pid != worker.pid
        assert await again.wait() == EXIT_CANNOT_WRITE
    finally:
        await template.close()
    assert template.process is not None
    assert template.process.returncode == 0  # closing its channel stops it


async def test_a_template_that_cannot_load_the_app_refuses_and_forks_nothing(
    tmp_path: Path,
) -> None:
    env = template_env(tmp_path)
    del env["EVENTHUB_NAME"]  # a binding's %EVENTHUB_NAME% can no longer resolve
    template = Template(tmp_path, env=env, log_file=None, cwd=PROJECT_ROOT)
    await template.start()
    try:
        assert not await template.ready()
        assert template.problem is not None
        assert "cannot load the app" in template.problem
        with pytest.raises(TemplateUnavailable):
            await template.fork("intent_agent", 0, decided_at=0.0)
        assert template.forks == 0
    finally:
        await template.close()


def test_forking_is_refused_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="holds-a-lock-maybe", daemon=True)
    thread.start()
    try:
        problem = fork_problem()
        assert problem is not None
        assert "holds-a-lock-maybe" in problem
    finally:
        release.set()
        thread.join()
    assert "holds-a-lock-maybe" not in (fork_problem() or "")


def test_a_handle_whose_process_exited_signals_nothing() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = ForkedWorker(sleeper.pid)
        stale.exited(0)  # reported gone: the pid may belong to another process by now
        stale.kill()
        assert sleeper.poll() is None
        ForkedWorker(sleeper.pid).kill()
        assert sleeper.wait(timeout=30) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    ("value", "enabled"), [(None, True), ("1", True), ("0", False), ("off", False)]
)
def test_prefork_is_on_unless_turned_off(value: str | None, enabled: bool) -> None:
    environ = {} if value is None else {"DEVHOST_PREFORK": value}
    assert prefork_enabled(environ) is enabled
