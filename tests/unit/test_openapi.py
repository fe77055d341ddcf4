"""The OpenAPI document describes the HTTP API as it answers: every operation is called and
its real response (status, headers, body) is validated against the document."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import azure.functions as func
from jsonschema import Draft202012Validator

from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from shared import bootstrap
from shared.config import Settings
from shared.domain.openapi import OPERATIONS, openapi_document
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, indexed
from tests.support.fakes import ESCALATION, INTENT_ANGRY, ScriptedModel, happy_model
from tests.support.outcome_fixtures import *  # noqa: F403  (clock, broker, closing)
from tests.support.stage_runner import run_stages

DOC = openapi_document()
REQUEST = {"customerId": "cust-1", "text": "I need a person", "channel": "chat"}


class Api:
    """Calls operations by id, as the host routes them, and checks each answer against DOC."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.functions = app_functions()
        self.paths = {op.operation_id: (op.path, op.method) for op in OPERATIONS}

    async def __call__(
        self,
        operation_id: str,
        *,
        id: str = "",
        params: dict[str, str] | None = None,
        body: bytes | dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        path, method = self.paths[operation_id]
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        req = func.HttpRequest(
            method=method.upper(),
            url="http://localhost" + path.replace("{id}", id),
            params=params or {},
            route_params={"id": id} if "{id}" in path else {},
            body=raw,
        )
        response = await self.functions[operation_id](req)
        data = json.loads(response.get_body())
        self.check(path, method, response, data)
        self.seen.add((operation_id, response.status_code))
        return response.status_code, data

    @staticmethod
    def check(path: str, method: str, response: func.HttpResponse, data: Any) -> None:
        documented = DOC["paths"][path][method]["responses"]
        status = str(response.status_code)
        assert status in documented, f"{method} {path} answered {status}, not documented"
        spec = documented[status]
        for header in spec.get("headers", {}):
            assert header in response.headers, f"{method} {path} {status} lacks {header}"
        assert response.mimetype == "application/json"
        schema = spec["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": DOC["components"]})
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], f"{method} {path} {status}: {errors[:3]}"


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    assert DOC["openapi"] == "3.1.0"
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises on an invalid schema
    # The checks below are not vacuous: a wrong body fails against its schema.
    conversation = {"$ref": "#/components/schemas/Conversation", "components": DOC["components"]}
    validator = Draft202012Validator(conversation)
    assert not validator.is_valid({"id": "c-1"})
    wrong = {
        "id": "c",
        "conversationId": "c",
        "customerId": "c",
        "status": "x",
        "createdAt": "t",
        "updatedAt": "t",
        "stages": {},
    }
    assert not validator.is_valid(wrong)  # stages are a list in the API
    assert validator.is_valid({**wrong, "stages": []})
    assert not validator.is_valid({**wrong, "stages": [], "surprise": 1})
    ids = [op["operationId"] for ops in DOC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_http_function_is_in_the_document_and_nothing_else() -> None:
    routes = set()
    for function in indexed():
        binding = json.loads(function.get_function_json())["bindings"]
        for trigger in (b for b in binding if b["type"] == "httpTrigger"):
            for method in trigger["methods"]:
                name = function.get_function_name()
                routes.add(("/api/" + trigger["route"], method.lower(), name))
    documented = {
        (path, method, op["operationId"])
        for path, ops in DOC["paths"].items()
        for method, op in ops.items()
    }
    assert routes == documented


async def test_every_operation_answers_as_documented(
    broker: Broker, clock: FakeClock, settings: Settings
) -> None:
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": [ESCALATION]})
    bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
    api = Api()
    await api("health")
    await api("ready")
    status, document = await api("openapi")
    assert document == json.loads(json.dumps(DOC))
    status, accepted = await api("post_request", body=REQUEST)
    assert status == 202
    assert (await api("post_request", body=b"{oops"))[0] == 400
    await run_stages(broker, clock, settings)
    status, conversation = await api("get_conversation", id=accepted["conversationId"])
    assert conversation["status"] == "escalated"
    assert (await api("get_conversation", id="c-nothing"))[0] == 404

    await app_functions()["ingest_batch"](
        _blob(b'{"customerId":"b-1","text":"hi","channel":"web"}\n{bad}\n')
    )
    batches = await (await bootstrap.get_services()).store.query_eq(
        settings.batches_container, "status", "accepted"
    )
    assert (await api("get_batch", id=batches[0]["id"]))[0] == 200
    assert (await api("get_batch", id="b-nothing"))[0] == 404

    status, queue = await api("list_escalations", params={"team": "billing", "pageSize": "5"})
    wid = queue["items"][0]["id"]
    assert (await api("list_escalations", params={"page": "zero"}))[0] == 400
    assert (await api("get_escalation", id=wid))[0] == 200
    assert (await api("get_escalation", id="w-nothing-t0"))[0] == 404
    assert (await api("claim_escalation", id=wid, body={}))[0] == 400
    assert (await api("claim_escalation", id="w-nothing-t0", body={"agent": "a"}))[0] == 404
    assert (await api("release_escalation", id=wid, body={"agent": "a"}))[0] == 409
    assert (await api("claim_escalation", id=wid, body={"agent": "a"}))[0] == 200
    assert (await api("claim_escalation", id=wid, body={"agent": "b"}))[0] == 409
    assert (await api("release_escalation", id=wid, body={"agent": "a"}))[0] == 200
    assert (await api("claim_escalation", id=wid, body={"agent": "a"}))[0] == 200
    assert (await api("resolve_escalation", id=wid, body={"agent": "a"}))[0] == 400
    assert (await api("resolve_escalation", id=wid, body={"agent": "a", "reply": "Done."}))[
        0
    ] == 200
    status, resolved = await api("get_conversation", id=accepted["conversationId"])
    assert resolved["status"] == "resolved_by_human"

    await bootstrap.shutdown()
    bootstrap.configure(
        settings=_limited(settings), publisher=BrokerPublisher(broker), llm=happy_model()
    )
    assert (await api("post_request", body={**REQUEST, "customerId": "x"}))[0] == 202
    assert (await api("post_request", body={**REQUEST, "customerId": "x"}))[0] == 429

    called = {operation for operation, _ in api.seen}
    assert called == {op.operation_id for op in OPERATIONS}


def _limited(settings: Settings) -> Settings:
    return replace(settings, ingress_rate_per_minute=1.0, ingress_burst=1)


def _blob(data: bytes) -> func.blob.InputStream:
    return func.blob.InputStream(
        data=data, name="batches/openapi.jsonl", length=len(data), blob_properties={"ETag": "0x1"}
    )
