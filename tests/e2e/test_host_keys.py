"""A running devhost asks for keys where Azure does (issue 10, item 8): the workdir's function
key on FUNCTION routes, and the simulator's per-run admin key on its admin routes.

https://learn.microsoft.com/azure/azure-functions/function-keys-how-to#use-access-keys
"""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp
import pytest

from devhost.environment import SIMULATOR_KEY
from devhost.host import Host, SimulatorOptions
from devhost.http import FUNCTION_KEY_FILE
from tests.support.devhost_run import workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_a_host_keeps_its_function_key_and_gives_each_run_an_admin_key(
    tmp_path: Path,
) -> None:
    where = workdir(tmp_path)
    admin_keys = []
    function_keys = []
    for _ in range(2):
        async with Host(where, simulator=SimulatorOptions(), http_port=0) as host:
            function_keys.append(host.function_key)
            assert host.simulator_admin_key is not None
            admin_keys.append(host.simulator_admin_key)
            for path, value in (
                (where.root / FUNCTION_KEY_FILE, host.function_key),
                (where.simulator_admin_key, host.simulator_admin_key),
            ):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert path.read_text().strip() == value
            api = f"http://127.0.0.1:{host.http_port}/api"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{api}/health") as open_route:
                    assert open_route.status == 200
                async with http.get(f"{api}/conversations/c-none") as keyless:
                    assert keyless.status == 401
                async with http.get(f"{api}/conversations/c-none?code={host.function_key}") as ok:
                    assert ok.status == 404  # ran; no such conversation
                stats = f"{host.simulator_url}/_sim/stats"
                async with http.get(stats, headers={"api-key": SIMULATOR_KEY}) as chat_key:
                    assert chat_key.status == 401
                async with http.get(stats, headers={"Authorization": "Bearer x"}) as bearer:
                    assert bearer.status == 401
                admin = {"x-sim-admin-key": host.simulator_admin_key}
                async with http.get(stats, headers=admin) as allowed:
                    assert allowed.status == 200
    assert function_keys[0] == function_keys[1]  # one key per workdir
    assert admin_keys[0] != admin_keys[1]  # one per run
