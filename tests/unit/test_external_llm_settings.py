"""devhost with ``DEVHOST_LLM=external``: ``LLM_DEPLOYMENT`` alone names every stage's model.

``local.settings.sample.json`` names Azure OpenAI deployments per stage, with quotas and prices
for them. Those describe the sample's account, not the endpoint a user points devhost at (an
Ollama user would otherwise be asked for ``gpt-4o-mini``), so in external mode only settings the
user gives - environment or ``local.settings.json`` - name models, quotas and prices.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from devhost.environment import PROJECT_ROOT, Workdir, app_settings, names_a_model
from shared.bootstrap import load_settings
from shared.domain.messages import Stage

OLLAMA = {
    "DEVHOST_LLM": "external",
    "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
    "AZURE_OPENAI_API_KEY": "ollama",
    "LLM_DEPLOYMENT": "llama3.1",
}


def project(tmp_path: Path, local: dict[str, str] | None = None) -> Path:
    """A project root with the real sample settings and, if given, a local.settings.json."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "local.settings.sample.json", root / "local.settings.sample.json")
    if local is not None:
        (root / "local.settings.json").write_text(json.dumps({"Values": local}))
    return root


def test_the_sample_names_models_quotas_and_prices_this_would_otherwise_keep() -> None:
    sample = json.loads((PROJECT_ROOT / "local.settings.sample.json").read_text())["Values"]
    assert {k for k in sample if names_a_model(k) and sample[k]} >= {
        "LLM_DEPLOYMENT_RESPONSE",
        "LLM_DEPLOYMENT_TPM",
        "LLM_PRICES",
    }


def test_llm_deployment_alone_is_every_stage_s_model_with_no_sample_quota_or_price(
    tmp_path: Path,
) -> None:
    values = app_settings(
        Workdir(tmp_path / "dh"), simulator_url=None, project_root=project(tmp_path), environ=OLLAMA
    )
    llm = load_settings(values).llm
    assert {stage: llm.deployments_for(stage) for stage in Stage} == {
        stage: ("llama3.1",) for stage in Stage
    }
    assert dict(llm.deployment_tpm) == {}
    assert dict(llm.prices_per_million) == {}


def test_what_the_user_sets_still_counts_in_external_mode(tmp_path: Path) -> None:
    root = project(tmp_path, local={"LLM_PRICES": "llama3.1=0.10/0.20"})
    environ = {**OLLAMA, "LLM_DEPLOYMENT_CRITIC": "qwen2.5", "LLM_DEPLOYMENT_TPM": "llama3.1=50000"}
    values = app_settings(
        Workdir(tmp_path / "dh"), simulator_url=None, project_root=root, environ=environ
    )
    llm = load_settings(values).llm
    assert llm.deployments_for(Stage.CRITIC) == ("qwen2.5",)
    assert llm.deployments_for(Stage.RESPONSE) == ("llama3.1",)
    assert dict(llm.deployment_tpm) == {"llama3.1": 50000}
    assert dict(llm.prices_per_million) == {"llama3.1": (0.10, 0.20)}


def test_the_simulator_keeps_the_sample_s_deployments(tmp_path: Path) -> None:
    values = app_settings(
        Workdir(tmp_path / "dh"),
        simulator_url="http://127.0.0.1:9",
        project_root=project(tmp_path),
        environ={},
    )
    llm = load_settings(values).llm
    assert llm.deployments_for(Stage.RESPONSE) == ("gpt-4o",)
    assert "gpt-4o-mini" in llm.prices_per_million
