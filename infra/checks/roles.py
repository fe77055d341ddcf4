"""Roles: what the Bicep grants, against what the documentation asks for."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.bicep_scan import (
    ModuleCall,
    array_items,
    closing_bracket,
    mask,
    try_evaluate,
)
from infra.checks.model import InfraModel

# ----------------------------------------------------------------------------------------------
# Roles: what the Bicep grants, against what the documentation asks for
# ----------------------------------------------------------------------------------------------

FUNCTIONS_ROLES_DOC = (
    "https://learn.microsoft.com/azure/azure-functions/functions-reference"
    "#grant-permission-to-the-identity"
)
HOST_STORAGE_DOC = (
    "https://learn.microsoft.com/azure/azure-functions/functions-reference"
    "#connecting-to-host-storage-with-an-identity"
)
SCALING_DOC = "https://learn.microsoft.com/azure/azure-functions/event-driven-scaling"


@dataclass(frozen=True)
class Grant:
    """One role given to one principal at one scope, as the Bicep states it.

    ``principal`` is ``app`` (the function app's identity), ``developer`` (``principalId``),
    ``keda`` (``kedaPrincipalId``) or ``eventgrid`` (the system topic's identity); ``scope`` is
    ``<main.bicep module symbol> <what in it>``; ``condition`` is the switch the grant depends on.
    """

    principal: str
    role: str
    scope: str
    condition: str | None = None


@dataclass(frozen=True)
class DocumentedRole:
    """A grant the documentation asks for, with the built-in role's id, the reason and the doc."""

    grant: Grant
    role_id: str
    why: str
    doc: str


def _documented(
    principal: str,
    role: str,
    role_id: str,
    scope: str,
    why: str,
    doc: str,
    condition: str | None = None,
) -> DocumentedRole:
    return DocumentedRole(Grant(principal, role, scope, condition), role_id, why, doc)


DOCUMENTED_ROLES: tuple[DocumentedRole, ...] = (
    # AzureWebJobsStorage ("Connecting to host storage with an identity").
    _documented(
        "app",
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "hostStorage account",
        "host coordination and key store; Event Hubs checkpoints; the Flex deployment package",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "hostStorage account",
        "Azure Blobs (trigger only): the trigger's internal queues live in host storage",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Account Contributor",
        "17d1049b-9a84-46fb-8f53-869881c3d3ab",
        "hostStorage account",
        "Azure Blobs (trigger only): 'All of' this, Blob Data Owner and Queue Data Contributor",
        HOST_STORAGE_DOC,
    ),
    _documented(
        "app",
        "Storage Table Data Contributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "hostStorage account",
        "host diagnostic events, persisted in table storage",
        HOST_STORAGE_DOC,
    ),
    # The blob trigger's own connection (BatchStorage), Azure Blobs extension table.
    _documented(
        "app",
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "batchStorage container 'batches'",
        "blob trigger (Event Grid source) on the batches container",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "batchStorage account",
        "blob trigger: poison blobs go to a queue on the connection's account",
        FUNCTIONS_ROLES_DOC,
    ),
    # Service Bus extension table: trigger Receiver (Owner), output binding Sender.
    _documented(
        "app",
        "Azure Service Bus Data Sender",
        "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
        "serviceBus namespace",
        "output: every stage sends to the next queue, a rescheduled copy or deadletter",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Azure Service Bus Data Receiver",
        "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
        "serviceBus triggered queues",
        "trigger, on the queues a trigger reads only",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Azure Service Bus Data Owner",
        "090c5cfd-751d-490a-894a-3ce6f1109419",
        "serviceBus triggered queues",
        "trigger (documented alongside Receiver): queue length for scaling needs manage rights",
        SCALING_DOC,
        condition="serviceBusScaleOnQueueLength",
    ),
    # Event Hubs extension table: trigger Receiver (or Owner); checkpoints are host storage blobs.
    _documented(
        "app",
        "Azure Event Hubs Data Receiver",
        "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
        "eventHubs hub",
        "ingest trigger",
        FUNCTIONS_ROLES_DOC,
    ),
    _documented(
        "app",
        "Cosmos DB Built-in Data Contributor",
        "00000000-0000-0000-0000-000000000002",
        "cosmos database",
        "state, quota and batches: reads and conditional writes (data-plane role)",
        "https://learn.microsoft.com/azure/cosmos-db/nosql/security/how-to-grant-data-plane-role-based-access",
    ),
    _documented(
        "app",
        "Key Vault Secrets User",
        "4633458b-17de-408a-b874-0445c86b69e6",
        "keyVault vault",
        "Key Vault references in app settings",
        "https://learn.microsoft.com/azure/app-service/app-service-key-vault-references",
    ),
    _documented(
        "app",
        "Cognitive Services OpenAI User",
        "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
        "openAi account",
        "chat completions with Entra ID",
        "https://learn.microsoft.com/azure/ai-services/openai/how-to/role-based-access-control",
    ),
    _documented(
        "app",
        "Monitoring Metrics Publisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
        "monitoring Application Insights",
        "telemetry with local authentication off",
        "https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication",
    ),
    # The Event Grid system topic: dead letters into the batch account.
    _documented(
        "eventgrid",
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "eventGrid container 'eventgrid-deadletter'",
        "dead-lettering with the topic's managed identity",
        "https://learn.microsoft.com/azure/event-grid/manage-event-delivery",
    ),
    # The person or pipeline running azd, to exercise the deployment.
    _documented(
        "developer",
        "Storage Blob Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "batchStorage account",
        "uploading batches",
        FUNCTIONS_ROLES_DOC,
        condition="hasDeveloper",
    ),
    _documented(
        "developer",
        "Azure Event Hubs Data Sender",
        "2b629674-e913-4c01-ae53-ef4638d8f975",
        "eventHubs hub",
        "sending requests",
        FUNCTIONS_ROLES_DOC,
        condition="hasDeveloper",
    ),
    # The KEDA operator (infra/keda), reading the same backlogs the scale controller reads.
    _documented(
        "keda",
        "Azure Service Bus Data Owner",
        "090c5cfd-751d-490a-894a-3ce6f1109419",
        "serviceBus triggered queues",
        "queue lengths for the azure-servicebus scaler",
        "https://keda.sh/docs/latest/scalers/azure-service-bus/",
        condition="hasKeda",
    ),
    _documented(
        "keda",
        "Azure Event Hubs Data Receiver",
        "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
        "eventHubs hub",
        "partition information for the azure-eventhub scaler",
        "https://keda.sh/docs/latest/scalers/azure-event-hub/",
        condition="hasKeda",
    ),
    _documented(
        "keda",
        "Storage Blob Data Reader",
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "hostStorage account",
        "the Functions checkpoints the azure-eventhub scaler compares with the hub",
        "https://keda.sh/docs/latest/scalers/azure-event-hub/",
        condition="hasKeda",
    ),
)
"""Every role the Bicep grants, per principal and scope, with the documentation asking for it.
The Service Bus Data Owner on the triggered queues stays because scaling on queue length needs
manage rights (``SCALING_DOC``); without ``serviceBusScaleOnQueueLength`` the app keeps Receiver and
Sender only."""

# Where each module makes the assignments of each role parameter, and the label of that scope.
# The label is checked against the ``scope:`` the module's role assignment resource declares.
_ROLE_PARAMS: dict[tuple[str, str], tuple[str, str]] = {
    ("modules/storage.bicep", "roleAssignments"): ("account", "scope: account"),
    ("modules/servicebus.bicep", "roleAssignments"): ("namespace", "scope: namespace"),
    ("modules/servicebus.bicep", "queueRoleAssignments"): (
        "triggered queues",
        "scope: queue[triggeredIndexes[i / roleCount]]",
    ),
    ("modules/eventhubs.bicep", "roleAssignments"): ("hub", "scope: hub"),
    ("modules/keyvault.bicep", "roleAssignments"): ("vault", "scope: vault"),
    ("modules/openai.bicep", "roleAssignments"): ("account", "scope: account"),
    ("modules/monitoring.bicep", "roleAssignments"): ("Application Insights", "scope: appInsights"),
}
_CONTAINER_SCOPE = "scope: roleContainers[index]"
_PRINCIPALS = {
    "app": "app",
    "identity.outputs.principalId": "app",
    "principalId": "developer",
    "kedaPrincipalId": "keda",
}
_ROLE_REFERENCE = re.compile(r"roles\['([^']+)'\]")
_BRACKETS = {"{": "}", "[": "]", "(": ")"}


def _enclosing(masked: str, index: int, opening: str) -> int | None:
    """Index of the innermost unclosed ``opening`` bracket before ``index``."""
    closing = _BRACKETS[opening]
    depth = 0
    for position in range(index - 1, -1, -1):
        char = masked[position]
        if char == closing:
            depth += 1
        elif char == opening:
            if depth == 0:
                return position
            depth -= 1
    return None


def _grants_in(
    model: InfraModel, call: ModuleCall, param: str, label: str
) -> tuple[list[Grant], list[str]]:
    """The grants of one role-assignment array passed to a module: each ``roles['...']`` sits in
    an object that is ``union(app, {...})`` or carries ``principalId:``, maybe ``container:``, in
    an array that may be one branch of ``switch ? [...] : []``."""
    expression = call.params[param]
    masked = mask(expression)
    grants: list[Grant] = []
    problems: list[str] = []
    for match in _ROLE_REFERENCE.finditer(expression):
        where = f"infra/main.bicep module {call.symbol} {param}: roles['{match.group(1)}']"
        brace = _enclosing(masked, match.start(), "{")
        if brace is None:
            problems.append(f"{where} is not inside a role assignment object")
            continue
        body = expression[brace : closing_bracket(masked, brace) + 1]
        union = re.search(r"union\(\s*([A-Za-z_][\w.]*)\s*,\s*$", expression[:brace])
        named = re.search(r"principalId:\s*([A-Za-z_][\w.]*)", body)
        principal_expression = union.group(1) if union else named.group(1) if named else ""
        principal = _PRINCIPALS.get(principal_expression)
        if principal is None:
            problems.append(f"{where}: principal {principal_expression!r} is not one it knows")
            continue
        scope = f"{call.symbol} {label}"
        container = re.search(r"container:\s*([^\n,}]+)", body)
        if container:
            known, name = try_evaluate(model.main, container.group(1).strip())
            if not known:
                problems.append(f"{where}: container {container.group(1)!r} is not static")
                continue
            scope = f"{call.symbol} container '{name}'"
        condition = None
        bracket = _enclosing(masked, brace, "[")
        if bracket is not None:
            ternary = re.search(r"([A-Za-z_][\w.]*)\s*\?\s*$", expression[:bracket])
            condition = ternary.group(1) if ternary else None
        grants.append(Grant(principal, match.group(1), scope, condition))
    return grants, problems


def role_grants(model: InfraModel) -> tuple[list[Grant], list[str]]:
    """Every role main.bicep grants, and the role references it could not read as grants."""
    grants: list[Grant] = []
    problems: list[str] = []
    seen = 0
    for call in model.main.modules.values():
        for param, expression in call.params.items():
            references = len(_ROLE_REFERENCE.findall(expression))
            if not references:
                continue
            seen += references
            found, trouble = _param_grants(model, call, param, expression)
            grants += found
            problems += trouble
    everywhere = len(_ROLE_REFERENCE.findall(model.main.text))
    if everywhere != seen:
        problems.append(
            f"infra/main.bicep refers to roles[...] {everywhere} times but only {seen} are in "
            "module params infra/checks/roles.py reads"
        )
    cosmos_grants, cosmos_problems = _cosmos_grants(model)
    return grants + cosmos_grants, problems + cosmos_problems


def _param_grants(
    model: InfraModel, call: ModuleCall, param: str, expression: str
) -> tuple[list[Grant], list[str]]:
    """The grants one module parameter makes, with the problems of reading them."""
    module = model.modules.get(call.path)
    if call.path == "modules/eventgrid.bicep" and param == "deadLetterRoleDefinitionId":
        role = _ROLE_REFERENCE.fullmatch(expression.strip())
        known, container = try_evaluate(model.main, call.params.get("deadLetterContainerName", ""))
        if role is None or not known:
            return [], [f"infra/main.bicep module {call.symbol} {param} is not static"]
        return [Grant("eventgrid", role.group(1), f"{call.symbol} container '{container}'")], []
    target = _ROLE_PARAMS.get((call.path, param))
    if target is None:
        return [], [
            f"infra/main.bicep module {call.symbol} passes roles in {param}, which "
            "infra/checks/roles.py _ROLE_PARAMS does not describe"
        ]
    label, scope_text = target
    problems: list[str] = []
    if module is not None and scope_text not in module.text:
        problems.append(
            f"infra/{call.path} no longer assigns {param} with {scope_text!r}; "
            "update infra/checks/roles.py _ROLE_PARAMS"
        )
    found, trouble = _grants_in(model, call, param, label)
    containers = any("container '" in grant.scope for grant in found)
    if containers and module is not None and _CONTAINER_SCOPE not in module.text:
        problems.append(f"infra/{call.path} has no container-scoped role assignments")
    return found, problems + trouble


def _cosmos_grants(model: InfraModel) -> tuple[list[Grant], list[str]]:
    """Cosmos DB data-plane roles are not Azure RBAC: the module takes principals, scoped to
    the database (``scope: '${account.id}/dbs/${databaseName}'``)."""
    grants: list[Grant] = []
    problems: list[str] = []
    for call in model.calls("modules/cosmos.bicep"):
        text = call.params.get("dataContributorPrincipalIds", "[]").strip()
        for principal in (
            (item.strip() for item in array_items(text)) if text.startswith("[") else ()
        ):
            who = _PRINCIPALS.get(principal)
            if who is None:
                problems.append(
                    f"infra/main.bicep cosmos data contributor {principal!r} is unknown"
                )
                continue
            grants.append(
                Grant(who, "Cosmos DB Built-in Data Contributor", f"{call.symbol} database")
            )
    return grants, problems


def role_problems(
    grants: Sequence[Grant],
    role_ids: Mapping[str, str],
    documented: Sequence[DocumentedRole] = DOCUMENTED_ROLES,
) -> list[str]:
    """The Bicep grants exactly the documented roles (per principal, role, scope and condition),
    and every documented role id is the one ``infra/roles.json`` holds."""
    problems: list[str] = []
    wanted = {entry.grant: entry for entry in documented}
    actual = set(grants)
    for grant in sorted(actual - set(wanted), key=str):
        problems.append(
            f"infra/main.bicep grants {grant.principal} {grant.role!r} on {grant.scope}"
            f"{f' (if {grant.condition})' if grant.condition else ''}, which no documented role "
            "in infra/checks/roles.py DOCUMENTED_ROLES asks for"
        )
    for grant in sorted(set(wanted) - actual, key=str):
        entry = wanted[grant]
        problems.append(
            f"infra/main.bicep does not grant {grant.principal} {grant.role!r} on {grant.scope}"
            f"{f' (if {grant.condition})' if grant.condition else ''}: {entry.why} ({entry.doc})"
        )
    for entry in documented:
        if role_ids.get(entry.grant.role) != entry.role_id:
            problems.append(
                f"{entry.grant.role!r} is {entry.role_id} in the built-in roles reference but "
                f"{role_ids.get(entry.grant.role)!r} in infra/roles.json"
            )
    return problems


def triggered_queue_problems(names: Mapping[str, Any], triggered: set[str]) -> list[str]:
    """``names.json serviceBus.triggeredQueues`` (where the trigger's queue-scoped roles go) names
    exactly the queues a Service Bus trigger reads."""
    queues = names["serviceBus"]["queues"]
    keys = names["serviceBus"].get("triggeredQueues", [])
    problems = [
        f"infra/names.json serviceBus.triggeredQueues names {key!r}, which is not a queue key"
        for key in keys
        if key not in queues
    ]
    listed = {queues[key] for key in keys if key in queues}
    for queue in sorted(triggered - listed):
        problems.append(
            f"queue {queue!r} has a Service Bus trigger but is missing from infra/names.json "
            "serviceBus.triggeredQueues, so the app has no receive rights on it"
        )
    for queue in sorted(listed - triggered):
        problems.append(
            f"infra/names.json serviceBus.triggeredQueues lists {queue!r}, which no Service Bus "
            "trigger reads: the app would hold receive rights it does not use"
        )
    return problems
