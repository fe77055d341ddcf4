"""Consistency checks between the code, its bindings, the Bicep, the KEDA manifests and the
local settings sample.

Switchboard keeps each name and number in one place (``infra/names.json``, ``scale.json``,
``host.json``, ``shared/config.py``) and several artefacts restate them: the Bicep app settings and
resources, the KEDA ScaledObjects, ``local.settings.sample.json``. Every check here returns a list
of problems, each a sentence naming the artefact to fix; an empty list means consistent.
The checks live in ``infra/checks/`` (settings, bindings, scale, keda, roles, network; the Bicep
model in ``model``) and ``infra/topics.py``; this module re-exports them and runs them all.
``tests/unit/test_infra_consistency.py`` runs them; ``python -m infra.consistency`` prints them.

The Bicep is read by ``infra/bicep_scan.py``, without a Bicep compiler; a value known only at
deployment time (a module output) is reported as unresolvable where a check needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infra.checks.bindings import (
    Binding,
    binding_problems,
    bindings_of,
    eh_trigger_hubs,
    load_function_app,
    sb_trigger_queues,
)
from infra.checks.keda import keda_problems
from infra.checks.model import (
    INFRA,
    REPO,
    Deployed,
    InfraModel,
    deployed_names,
    load_json,
    load_keda,
    project_python_version,
    role_ids,
)
from infra.checks.network import PRIVATE_ENDPOINTS, network_problems
from infra.checks.roles import (
    DOCUMENTED_ROLES,
    DocumentedRole,
    Grant,
    role_grants,
    role_problems,
    triggered_queue_problems,
)
from infra.checks.scale import (
    ALWAYS_READY_GROUPS,
    always_ready_problems,
    iso_duration_seconds,
    lock_problems,
    scale_problems,
    timespan_seconds,
)
from infra.checks.settings import (
    DEVHOST_PREFIX,
    LOCAL_ONLY,
    OPTIONAL_UNSET,
    PLATFORM_PROVIDED,
    CodeSetting,
    environ_reads,
    secret_problems,
    setting_problems,
    settings_read_by_code,
)
from infra.topics import topic_problems

__all__ = [
    "ALWAYS_READY_GROUPS",
    "DEVHOST_PREFIX",
    "DOCUMENTED_ROLES",
    "INFRA",
    "LOCAL_ONLY",
    "OPTIONAL_UNSET",
    "PLATFORM_PROVIDED",
    "PRIVATE_ENDPOINTS",
    "REPO",
    "Binding",
    "CodeSetting",
    "Deployed",
    "DocumentedRole",
    "Grant",
    "InfraModel",
    "always_ready_problems",
    "binding_problems",
    "bindings_of",
    "check_repository",
    "deployed_names",
    "eh_trigger_hubs",
    "environ_reads",
    "iso_duration_seconds",
    "keda_problems",
    "load_function_app",
    "load_json",
    "load_keda",
    "lock_problems",
    "network_problems",
    "project_python_version",
    "role_grants",
    "role_ids",
    "role_problems",
    "sb_trigger_queues",
    "scale_problems",
    "secret_problems",
    "setting_problems",
    "settings_read_by_code",
    "timespan_seconds",
    "topic_problems",
    "triggered_queue_problems",
]


def check_repository(repo: Path = REPO) -> list[str]:
    """Every check, on this repository's artefacts."""
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    infra = repo / "infra"
    model = InfraModel.load(infra)
    names = load_json(infra / "names.json")
    sample = load_json(repo / "local.settings.sample.json")["Values"]
    host = load_json(repo / "host.json")
    scale = load_json(repo / "scale.json")
    deployed, problems = deployed_names(model)
    problems += setting_problems(settings_read_by_code(repo), model.app_settings, sample)
    problems += secret_problems(model.app_settings)
    problems += scale_problems(model, scale, project_python_version(repo))
    service_bus = model.modules["modules/servicebus.bicep"]
    locks = [str(service_bus.evaluate(e)) for e in service_bus.property_values("lockDuration")]
    limits: dict[str, float] = {}
    for setting in ("LLM_TIMEOUT_S", "LLM_WAIT_BUDGET_S"):
        known, value = model.setting_value(setting)
        if known:
            limits[f"Azure's {setting}"] = float(value)
    problems += lock_problems(locks, host, limits)
    bindings: list[Binding] = []
    if (repo / "function_app.py").is_file():
        bindings = bindings_of(load_function_app(repo))
        problems += binding_problems(
            bindings, sample, model, deployed, batch_function=names["functions"]["batchIngest"]
        )
        problems += always_ready_problems(scale, bindings)
    triggered = sb_trigger_queues(bindings, sample)
    problems += keda_problems(
        load_keda(infra / "keda"),
        host,
        scale,
        model,
        deployed,
        triggered,
        eh_trigger_hubs(bindings, sample),
    )
    grants, role_trouble = role_grants(model)
    problems += role_trouble + role_problems(grants, role_ids(infra))
    if bindings:
        problems += triggered_queue_problems(names, triggered)
    problems += network_problems(model, scale)
    problems += topic_problems(model, names, scale)  # infra/topics.py
    return problems


def main() -> int:
    """Print every problem the checks find in this repository; exit 1 if there are any."""
    problems = check_repository()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
