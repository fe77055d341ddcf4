"""HTTP: liveness, readiness, the OpenAPI document, and read access to conversations and
batches."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from shared.bootstrap import get_services
from shared.domain.openapi import openapi_document
from shared.errors import ConfigError

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _json(body: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str), status_code=status, mimetype="application/json"
    )


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness: the worker answers. Nothing else is checked."""
    return _json({"status": "ok"})


@bp.function_name("ready")
@bp.route(route="ready", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ready(req: func.HttpRequest) -> func.HttpResponse:
    """Readiness: settings valid and dependencies reachable."""
    try:
        services = await get_services()
    except ConfigError as exc:
        return _json({"status": "not ready", "settings": str(exc)}, 503)
    checks = await services.pipeline.readiness()
    ok = all(v == "ok" for v in checks.values())
    return _json({"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503)


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The HTTP API as an OpenAPI 3.1 document, generated from its pydantic models."""
    return _json(openapi_document())


@bp.function_name("get_conversation")
@bp.route(route="conversations/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_conversation(req: func.HttpRequest) -> func.HttpResponse:
    """A conversation's stages, outcome and tokens."""
    services = await get_services()
    view = await services.pipeline.conversation(req.route_params.get("id", ""))
    if view is None:
        return _json({"error": "conversation not found"}, 404)
    return _json(view)


@bp.function_name("get_batch")
@bp.route(route="batches/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_batch(req: func.HttpRequest) -> func.HttpResponse:
    """A batch's counts, rejected lines with reasons, and its conversations by status."""
    services = await get_services()
    view = await services.pipeline.batch(req.route_params.get("id", ""))
    if view is None:
        return _json({"error": "batch not found"}, 404)
    return _json(view)
