"""The worker template's imports cover an instance's first model call.

Forked instances inherit the template's modules; whatever the first model call still imports is
paid on the cold path of every new instance (the openai SDK imports its HTTP transport on the
first request, not when the client is built). The oracle is the real SDK's own import
behaviour, observed in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devhost.simulator import (
    DeploymentLimits,
    LatencyModel,
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = "warm-imports-key"


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(
        SimulatorConfig(
            api_key=KEY,
            deployments={"probe-model": DeploymentLimits(tpm=600_000)},
            latency=LatencyModel(fixed_ms=1),
        )
    )
    yield sim
    await sim.stop()


async def test_a_first_model_call_imports_nothing_the_template_did_not(
    simulator: RunningSimulator, tmp_path: Path
) -> None:
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.first_call_probe",
        simulator.base_url,
        KEY,
        "probe-model",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(probe.communicate(), timeout=120)
    assert probe.returncode == 0, err.decode()
    imported = json.loads(out.decode().strip().splitlines()[-1])
    assert imported == [], f"imported on the first call, add to WARM_IMPORTS: {imported}"
