"""``DEVHOST_LLM=external`` with ``LLM_DEPLOYMENT`` alone, end to end, against a second
simulator that serves only that deployment (any other name is 404 ``DeploymentNotFound``, as
Ollama answers a model it does not have). The README's "Pointing devhost at a real model"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devhost.host import Host
from devhost.simulator import DeploymentLimits, LatencyModel, SimulatorConfig, run_simulator
from tests.support.devhost_run import post, request_lines, run_until_final, workdir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MODEL = "llama3.1"
KEY = "ollama"


async def test_every_stage_uses_the_one_model_named_with_no_sample_prices(tmp_path: Path) -> None:
    only_model = SimulatorConfig(
        api_key=KEY,
        deployments={MODEL: DeploymentLimits(tpm=2_000_000)},
        latency=LatencyModel(fixed_ms=0),
    )
    async with run_simulator(only_model) as model_server:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "AZURE_OPENAI"))
        }
        environ.update(
            DEVHOST_LLM="external",
            OPENAI_BASE_URL=f"{model_server.base_url}/v1",
            AZURE_OPENAI_API_KEY=KEY,
            LLM_DEPLOYMENT=MODEL,
        )
        lines = request_lines(6, prefix="ext")
        async with Host(workdir(tmp_path), simulator=None, http_port=0, environ=environ) as host:
            assert host.simulator_url is None  # devhost started no simulator of its own
            settings = post(host, lines)
            docs = await run_until_final(host, settings, len(lines), timeout_s=180)
        stats = model_server.stats()
    assert len(docs) == len(lines)
    assert {d["status"] for d in docs} <= {"answered", "escalated"}, [
        (d["status"], d.get("failure")) for d in docs
    ]
    used = {
        deployment
        for doc in docs
        for record in doc["stages"].values()
        for deployment in record["usage"]["deployments"]
    }
    assert used == {MODEL}
    # Every request the pipeline made reached the one deployment; none was refused as unknown.
    assert set(stats["deployments"]) == {MODEL}
    # No sample price applies to a model the user priced nowhere.
    assert all(doc["tokens"]["total"]["costUsd"] == 0 for doc in docs)
    assert all(doc["tokens"]["total"]["calls"] >= 2 for doc in docs)
