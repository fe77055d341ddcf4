"""HTTP: the teams' work queue - list escalations, claim, release, resolve (function key).

Behind App Service authentication (Easy Auth, Entra ID) the platform puts the signed-in
principal in ``X-MS-CLIENT-PRINCIPAL-NAME``; that name is the agent then, and a body's
``agent`` is used only without it (devhost, function keys).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
from pydantic import BaseModel, ValidationError

from shared.bootstrap import get_services
from shared.domain.api import AgentAction, ErrorBody, ResolveBody, WorkItemList
from shared.domain.messages import describe_validation_error
from shared.domain.workitem import WorkItemConflict, WorkItemStatus
from shared.errors import TransientError
from shared.service.escalations import MAX_PAGE_SIZE, UnknownWorkItem

bp = func.Blueprint()
log = logging.getLogger(__name__)

PRINCIPAL_HEADER = "x-ms-client-principal-name"


def _json(body: BaseModel | dict[str, Any], status: int = 200) -> func.HttpResponse:
    data = (
        body.model_dump(mode="json", by_alias=True, exclude_none=True)
        if isinstance(body, BaseModel)
        else body
    )
    return func.HttpResponse(json.dumps(data), status_code=status, mimetype="application/json")


def _error(status: int, message: str, code: str) -> func.HttpResponse:
    return _json(ErrorBody(error=message, code=code), status)


def _int(req: func.HttpRequest, name: str, default: int, high: int) -> int:
    raw = req.params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ValueError(f"{name} must be a whole number from 1 to {high}")
    return int(raw)


@bp.function_name("list_escalations")
@bp.route(route="escalations", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_escalations(req: func.HttpRequest) -> func.HttpResponse:
    """Work items, filtered by team, priority and status, paged, urgent and oldest first."""
    try:
        page = _int(req, "page", 1, 1_000_000)
        size = _int(req, "pageSize", 50, MAX_PAGE_SIZE)
        status = WorkItemStatus(req.params["status"]) if req.params.get("status") else None
    except ValueError as exc:
        return _error(400, str(exc), "invalid_query")
    services = await get_services()
    found = await services.pipeline.escalations.list(
        team=req.params.get("team") or None,
        priority=req.params.get("priority") or None,
        status=status,
        page=page,
        page_size=size,
    )
    following = None
    if page * size < found.total:
        query = {k: v for k, v in req.params.items() if v and k != "page"}
        following = "/api/escalations?" + urlencode({**query, "page": page + 1})
    return _json(
        WorkItemList(
            items=found.items, page=page, page_size=size, total=found.total, next=following
        )
    )


@bp.function_name("get_escalation")
@bp.route(route="escalations/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_escalation(req: func.HttpRequest) -> func.HttpResponse:
    """One work item."""
    services = await get_services()
    try:
        item, _ = await services.pipeline.escalations.get(req.route_params.get("id", ""))
    except UnknownWorkItem:
        return _error(404, "work item not found", "not_found")
    except WorkItemConflict as exc:
        return _error(409, str(exc), "conflict")
    return _json(item)


async def _change(req: func.HttpRequest, action: str) -> func.HttpResponse:
    model: type[AgentAction] = ResolveBody if action == "resolve" else AgentAction
    try:
        body = model.model_validate_json(req.get_body() or b"{}")
    except ValidationError as exc:
        return _error(400, describe_validation_error(exc), "invalid_body")
    agent = req.headers.get(PRINCIPAL_HEADER) or body.agent
    if not agent:
        return _error(400, "name the agent (body 'agent', or sign in)", "invalid_body")
    escalations = (await get_services()).pipeline.escalations
    work_item_id = req.route_params.get("id", "")
    try:
        if isinstance(body, ResolveBody):
            item = await escalations.resolve(work_item_id, agent, body.reply)
        elif action == "claim":
            item = await escalations.claim(work_item_id, agent)
        else:
            item = await escalations.release(work_item_id, agent)
    except UnknownWorkItem:
        return _error(404, "work item not found", "not_found")
    except WorkItemConflict as exc:
        return _error(409, str(exc), "conflict")
    except ValueError as exc:
        return _error(400, str(exc), "invalid_body")
    except TransientError as exc:
        # The change is stored; only its outcome message did not leave. The same request
        # again changes nothing and sends the message still pending.
        log.warning("work item %s: %s stored, its send failed: %s", work_item_id, action, exc)
        response = _error(503, "stored; sending the reply failed: retry the request", "retry")
        response.headers["Retry-After"] = "5"
        return response
    log.info("work item %s: %s by %s", work_item_id, action, agent)
    return _json(item)


@bp.function_name("claim_escalation")
@bp.route(route="escalations/{id}/claim", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def claim_escalation(req: func.HttpRequest) -> func.HttpResponse:
    """Take the work item: one agent at a time (409 when someone else holds it)."""
    return await _change(req, "claim")


@bp.function_name("release_escalation")
@bp.route(route="escalations/{id}/release", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def release_escalation(req: func.HttpRequest) -> func.HttpResponse:
    """Give the work item back to the team's queue (its holder only)."""
    return await _change(req, "release")


@bp.function_name("resolve_escalation")
@bp.route(route="escalations/{id}/resolve", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def resolve_escalation(req: func.HttpRequest) -> func.HttpResponse:
    """Answer the customer: the reply is delivered through the outbox and the conversation's
    outcome becomes ``resolved_by_human`` (its holder only)."""
    return await _change(req, "resolve")
