"""The lock alone deploys: a fresh venv with only requirements.txt (what the Functions build
installs) indexes function_app.py and imports everything the app can import at run time.

Installs from the package index pip is configured with (PyPI); nothing else is fetched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.drive import indexed
from tests.unit.test_requirements_lock import DEV_ONLY, LOCK, ROOT, runtime_imports

pytestmark = pytest.mark.integration


PROBE = """
import importlib, json, sys
sys.path.insert(0, {root!r})
import function_app
functions = sorted(f.get_function_name() for f in function_app.app.get_functions())
failed = {{}}
for name in {modules!r}:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # a missing package, not an attribute imported with ``from``
            failed[name] = str(exc)
            continue
        try:
            importlib.import_module(name.rpartition(".")[0])
        except ImportError as parent:
            failed[name] = str(parent)
    except ImportError as exc:
        failed[name] = str(exc)
loaded = sorted({{m.split(".")[0] for m in sys.modules}})
print(json.dumps({{"functions": functions, "failed": failed, "loaded": loaded}}))
"""


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.timeout(900)  # a cap for a hung install only: the packages come over the network
def test_a_fresh_venv_from_the_lock_alone_indexes_and_imports_the_function_app(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # --no-deps: the lock must be complete by itself; pip check then proves nothing is missing.
    installed = _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--requirement", LOCK)
    assert installed.returncode == 0, installed.stderr[-2000:]
    checked = _run(python, "-m", "pip", "check")
    assert checked.returncode == 0, checked.stdout

    local, third_party = runtime_imports()
    modules = sorted(local - {"function_app"}) + sorted(
        m for m, optional in third_party.items() if not optional
    )
    probe = _run(python, "-I", "-c", PROBE.format(root=str(ROOT), modules=modules), cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    # The same functions as the development environment indexes: nothing the app registers
    # may depend on a package only the dev set installs.
    expected = {f.get_function_name() for f in indexed()}
    assert "ingest" in expected
    assert set(result["functions"]) == expected
    assert result["failed"] == {}
    assert not {"aiohttp", "rich", "tiktoken", "jsonschema"} & set(result["loaded"])
    listed = _run(python, "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not set(DEV_ONLY) & names
