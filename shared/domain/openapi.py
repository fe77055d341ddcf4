"""The HTTP API as an OpenAPI 3.1 document, generated from the pydantic models it answers with.

The paths are listed once here, with each operation's parameters, body and responses by model
(``shared.domain.api``, the conversation aggregate, the work item); their JSON Schemas
(2020-12, which OpenAPI 3.1 uses) come from pydantic, as the responses are made, by alias and
in serialization mode. ``tests/unit/test_openapi.py`` calls every operation and validates the
real responses against this document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.domain.api import (
    Accepted,
    AgentAction,
    BatchView,
    ErrorBody,
    Health,
    Readiness,
    ResolveBody,
    WorkItemList,
)
from shared.domain.conversation import Conversation, StageRecord
from shared.domain.messages import CustomerRequest
from shared.domain.workitem import WorkItem, WorkItemStatus

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    operation_id: str
    summary: str
    responses: dict[int, Response]
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    body: type[BaseModel] | None = None
    raw_body: bool = False
    anonymous: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


NOT_FOUND = Response("Not found.", ErrorBody)
CONFLICT = Response("The work item is not in a state that allows this.", ErrorBody)
BAD = Response("The request is malformed.", ErrorBody)
ITEM = "/api/escalations/{id}"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/api/health",
        "get",
        "health",
        "Liveness",
        {200: Response("Alive.", Health)},
        anonymous=True,
    ),
    Operation(
        "/api/ready",
        "get",
        "ready",
        "Readiness",
        {200: Response("Ready.", Readiness), 503: Response("Not ready.", Readiness)},
        anonymous=True,
    ),
    Operation(
        "/api/openapi.json",
        "get",
        "openapi",
        "This document",
        {200: Response("The OpenAPI document.")},
        anonymous=True,
    ),
    Operation(
        "/api/requests",
        "post",
        "post_request",
        "Send a customer request",
        {
            202: Response("Taken in; follow it at Location.", Accepted, ("Location",)),
            400: Response("Refused by the request contract; code is its reason.", ErrorBody),
            429: Response("Over the customer's ingress rate.", ErrorBody, ("Retry-After",)),
        },
        raw_body=True,
    ),
    Operation(
        "/api/conversations/{id}",
        "get",
        "get_conversation",
        "A conversation",
        {
            200: Response("Its stages, outcome, outbox and audit trail.", Conversation),
            404: NOT_FOUND,
        },
    ),
    Operation(
        "/api/batches/{id}",
        "get",
        "get_batch",
        "A batch document's record",
        {200: Response("Counts, rejected lines, statuses.", BatchView), 404: NOT_FOUND},
    ),
    Operation(
        "/api/escalations",
        "get",
        "list_escalations",
        "The work queue",
        {200: Response("One page, urgent first, then oldest.", WorkItemList), 400: BAD},
        query=(
            ("team", {"type": "string"}),
            ("priority", {"type": "string", "enum": ["urgent", "high", "normal", "low"]}),
            ("status", {"type": "string", "enum": [s.value for s in WorkItemStatus]}),
            ("page", {"type": "integer", "minimum": 1}),
            ("pageSize", {"type": "integer", "minimum": 1, "maximum": 200}),
        ),
    ),
    Operation(
        ITEM,
        "get",
        "get_escalation",
        "One work item",
        {200: Response("The work item.", WorkItem), 404: NOT_FOUND, 409: CONFLICT},
    ),
    Operation(
        ITEM + "/claim",
        "post",
        "claim_escalation",
        "Claim a work item",
        {200: Response("Held by the agent.", WorkItem), 400: BAD, 404: NOT_FOUND, 409: CONFLICT},
        body=AgentAction,
    ),
    Operation(
        ITEM + "/release",
        "post",
        "release_escalation",
        "Release a work item",
        {200: Response("Open again.", WorkItem), 400: BAD, 404: NOT_FOUND, 409: CONFLICT},
        body=AgentAction,
    ),
    Operation(
        ITEM + "/resolve",
        "post",
        "resolve_escalation",
        "Resolve with a reply",
        {
            200: Response("Resolved; the reply is in the outbox.", WorkItem),
            400: BAD,
            404: NOT_FOUND,
            409: CONFLICT,
            503: Response(
                "Resolved, but the reply could not be sent yet: send the same request again.",
                ErrorBody,
                ("Retry-After",),
            ),
        },
        body=ResolveBody,
    ),
)


def _schemas() -> dict[str, Any]:
    models: set[type[BaseModel]] = {StageRecord}
    for op in OPERATIONS:
        models.update(r.model for r in op.responses.values() if r.model is not None)
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "serialization") for m in ordered], ref_template=REF, by_alias=True
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    # The API shows a conversation's stage records as a list, in the order they were written.
    conversation = dict(schemas["Conversation"])
    properties = dict(conversation["properties"])
    properties["stages"] = {"type": "array", "items": {"$ref": REF.format(model="StageRecord")}}
    conversation["properties"] = properties
    schemas["Conversation"] = conversation
    return schemas


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    parameters = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query
    ]
    if "{id}" in op.path:
        parameters.insert(
            0, {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=op.body.__name__)}}
            },
        }
    elif op.raw_body:
        doc["requestBody"] = {
            "required": True,
            "description": "One customer request (the request contract, as for hub events).",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CustomerRequest"}}
            },
        }
    responses: dict[str, Any] = {}
    for status, response in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": response.description}
        if response.model is not None:
            schema = {"$ref": REF.format(model=response.model.__name__)}
            entry["content"] = {"application/json": {"schema": schema}}
        elif op.operation_id == "openapi":
            entry["content"] = {"application/json": {"schema": {"type": "object"}}}
        if response.headers:
            entry["headers"] = {
                h: {"required": True, "schema": {"type": "string"}} for h in response.headers
            }
        responses[str(status)] = entry
    doc["responses"] = responses
    doc["security"] = [] if op.anonymous else [{"functionKey": []}, {"functionKeyQuery": []}]
    return doc


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    schemas = _schemas()
    request_schema = CustomerRequest.model_json_schema(by_alias=True, ref_template=REF)
    schemas.update(request_schema.pop("$defs", {}))
    schemas["CustomerRequest"] = request_schema
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard",
            "version": "1",
            "description": (
                "Customer requests in, conversations and the teams' escalations out. "
                "Function-level routes take a function key (x-functions-key header or the "
                "code query parameter); in Azure, App Service authentication (Entra ID) can "
                "front them, and the escalation routes then act as the signed-in principal."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
        },
    }
