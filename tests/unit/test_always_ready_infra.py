"""Always-ready instances in infra: scale.json ``alwaysReady`` reaches the Flex app's
``scaleAndConcurrency.alwaysReady``, and the consistency checks refuse names and counts that
Azure or devhost could not honour.

The shape (``[{name, instanceCount}]``, a name being a trigger group ``http``, ``blob``,
``durable`` or ``function:<name>``) is Azure's: "Flex Consumption plan hosting", sections
"Always ready instances" and "Per-function scaling"
(https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#always-ready-instances).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra import consistency as c

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_default_keeps_no_instance_ready() -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    assert scale["alwaysReady"] == []


@pytest.fixture(scope="module")
def model() -> c.InfraModel:
    return c.InfraModel.load(REPO / "infra")


@pytest.fixture(scope="module")
def bindings() -> list[c.Binding]:
    return c.bindings_of(c.load_function_app(REPO))


def test_the_flex_app_gets_scale_json_always_ready(model: c.InfraModel) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    assert c.scale_problems(model, scale, c.project_python_version(REPO)) == []
    # The module assigns the property once, from the parameter main.bicep passes (checked above).
    app = model.modules["modules/functionapp.bicep"]
    assert app.property_values("alwaysReady") == ["alwaysReady"]
    assert "alwaysReady" in app.params
    drifted = {**scale, "alwaysReady": [{"name": "http", "instanceCount": 1}]}
    problems = c.scale_problems(model, drifted, c.project_python_version(REPO))
    assert any("alwaysReady" in p for p in problems), problems


def test_always_ready_that_azure_and_devhost_can_honour_passes(
    bindings: list[c.Binding],
) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    scale["alwaysReady"] = [
        {"name": "function:intent_agent", "instanceCount": 1},
        {"name": "function:ingest", "instanceCount": 1},
        {"name": "http", "instanceCount": 1},
        {"name": "blob", "instanceCount": 0},
    ]
    assert c.always_ready_problems(scale, bindings) == []


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"name": "function:nope", "instanceCount": 1}, "no function 'nope'"),
        ({"name": "durable", "instanceCount": 1}, "has no function in it"),
        ({"name": "function:health", "instanceCount": 1}, "name the group 'http'"),
        ({"name": "function:intent_agent", "instanceCount": 9}, "more than devhost can run"),
        ({"name": "function:ingest", "instanceCount": 5}, "more than devhost can run"),
        ({"name": "agents", "instanceCount": 1}, "neither a group"),
        ({"name": "http", "instanceCount": -1}, "negative"),
        ({"name": "http"}, "is not {name, instanceCount}"),
    ],
)
def test_always_ready_that_cannot_be_honoured_is_reported(
    bindings: list[c.Binding], entry: dict[str, Any], complaint: str
) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    scale["alwaysReady"] = [entry]
    problems = c.always_ready_problems(scale, bindings)
    assert any(complaint in p for p in problems), problems


def test_always_ready_beyond_the_instance_ceiling_is_reported(bindings: list[c.Binding]) -> None:
    scale = json.loads((REPO / "scale.json").read_text())
    scale["maximumInstanceCount"] = 2
    scale["alwaysReady"] = [
        {"name": "function:intent_agent", "instanceCount": 2},
        {"name": "http", "instanceCount": 1},
    ]
    problems = c.always_ready_problems(scale, bindings)
    assert any("more than maximumInstanceCount 2" in p for p in problems), problems
