"""HTTP ingress: ``POST /api/requests`` (function key), the same request contract as the hub.

202 with ``Location: /api/conversations/{id}`` for a request taken in (again for a repeated
idempotency key: the same conversation); 400 with the contract's reason code and the
rejection record's id for a refused one; 429 with ``Retry-After`` when the customer is over
the ingress rate.
"""

from __future__ import annotations

import json
import uuid

import azure.functions as func
from pydantic import BaseModel

from shared.bootstrap import get_services
from shared.domain.api import Accepted, ErrorBody

bp = func.Blueprint()


def _json(body: BaseModel, status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body.model_dump(mode="json", by_alias=True, exclude_none=True)),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


@bp.function_name("post_request")
@bp.route(route="requests", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def post_request(req: func.HttpRequest) -> func.HttpResponse:
    """Take one customer request in, as an Event Hub event would be."""
    services = await get_services()
    verdict = await services.pipeline.ingest_http(
        req.get_body(),
        request_id=str(uuid.uuid4()),
        traceparent=req.headers.get("traceparent"),
    )
    if verdict.status == "rejected":
        return _json(
            ErrorBody(error=verdict.reason, code=verdict.code, rejection_id=verdict.record_id), 400
        )
    if verdict.status == "rate_limited":
        return _json(
            ErrorBody(error=verdict.reason, code=verdict.code),
            429,
            {"Retry-After": verdict.retry_after},
        )
    location = f"/api/conversations/{verdict.record_id}"
    return _json(
        Accepted(conversation_id=verdict.record_id, location=location),
        202,
        {"Location": location},
    )
