"""HTTP ingress, POST /api/requests: the hub's contract and codes, 202 with Location,
idempotent on the key, 429 with Retry-After over the customer's rate; over-limit hub events
become rate_limited rejections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared import bootstrap
from tests.conftest import make_settings
from tests.support.drive import app_functions, drain, hub_batch, stored_event
from tests.support.fakes import RecordingPublisher, happy_model

REQUEST = {"customerId": "cust-1", "text": "Where is order A-1?", "channel": "web"}


@pytest.fixture(autouse=True)
async def _close_services() -> Any:
    yield
    await bootstrap.shutdown()


def _configure(tmp_path: Path, **env: str) -> RecordingPublisher:
    publisher = RecordingPublisher()
    settings = make_settings(tmp_path, **env)
    bootstrap.configure(settings=settings, publisher=publisher, llm=happy_model())
    return publisher


async def post(body: bytes | dict[str, Any]) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = func.HttpRequest(method="POST", url="http://localhost/api/requests", body=raw)
    return await app_functions()["post_request"](req)


async def get_conversation(location: str) -> func.HttpResponse:
    cid = location.rsplit("/", 1)[1]
    req = func.HttpRequest(
        method="GET", url="http://localhost" + location, body=b"", route_params={"id": cid}
    )
    return await app_functions()["get_conversation"](req)


async def test_a_request_is_accepted_with_the_address_of_its_conversation(
    tmp_path: Path,
) -> None:
    publisher = _configure(tmp_path)
    response = await post(REQUEST)
    assert response.status_code == 202
    location = response.headers["Location"]
    body = json.loads(response.get_body())
    assert location == f"/api/conversations/{body['conversationId']}"
    await drain(publisher, make_settings(tmp_path))
    shown = await get_conversation(location)
    assert shown.status_code == 200
    assert json.loads(shown.get_body())["status"] == "answered"


async def test_the_same_idempotency_key_is_the_same_conversation(tmp_path: Path) -> None:
    publisher = _configure(tmp_path, INGRESS_BURST="1", INGRESS_RATE_PER_MINUTE="1")
    keyed = {**REQUEST, "idempotencyKey": "order-A-1"}
    first, second = await post(keyed), await post(keyed)
    assert (first.status_code, second.status_code) == (202, 202)  # the repeat takes no token
    assert first.headers["Location"] == second.headers["Location"]
    assert len(publisher.sent) == 1
    assert len(publisher.dropped) == 1  # the first message re-sent, dropped as a duplicate
    third = await post(REQUEST)  # no key: a new request, and the bucket is empty
    assert third.status_code == 429


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (json.dumps({**REQUEST, "channel": "fax"}).encode(), "invalid_channel"),
        (json.dumps({"text": "x", "channel": "web"}).encode(), "missing_field"),
        (b"", "empty_body"),
    ],
)
async def test_a_refused_request_gets_the_contract_code_and_a_record(
    tmp_path: Path, body: bytes, code: str
) -> None:
    _configure(tmp_path)
    response = await post(body)
    assert response.status_code == 400
    refused = json.loads(response.get_body())
    assert refused["code"] == code
    assert refused["rejectionId"].startswith("r-")
    services = await bootstrap.get_services()
    record = await services.pipeline.conversation(refused["rejectionId"])
    assert record is not None
    assert record["reasonCode"] == code
    assert record["source"]["kind"] == "http"


async def test_over_the_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    _configure(tmp_path, INGRESS_BURST="2", INGRESS_RATE_PER_MINUTE="1")
    statuses = [(await post({**REQUEST, "text": f"n{n}"})).status_code for n in range(2)]
    assert statuses == [202, 202]
    limited = await post(REQUEST)
    assert limited.status_code == 429
    assert 50 <= int(limited.headers["Retry-After"]) <= 60
    assert json.loads(limited.get_body())["code"] == "rate_limited"
    other = await post({**REQUEST, "customerId": "cust-2"})
    assert other.status_code == 202


async def test_hub_events_over_the_rate_are_recorded_as_rate_limited(tmp_path: Path) -> None:
    publisher = _configure(tmp_path, INGRESS_BURST="2", INGRESS_RATE_PER_MINUTE="1")
    events = [
        stored_event(json.dumps({**REQUEST, "text": f"n{n}"}).encode(), sequence=n + 1)
        for n in range(4)
    ]
    await app_functions()["ingest"](hub_batch(events))
    accepted = len(publisher.sent)
    services = await bootstrap.get_services()
    store, settings = services.store, services.settings
    limited = await store.query_eq(settings.conversations_container, "reasonCode", "rate_limited")
    assert (accepted, len(limited)) == (2, 2)
    # The platform retries the batch: every event keeps its first verdict, nothing doubles.
    await app_functions()["ingest"](hub_batch(events))
    again = await store.query_eq(settings.conversations_container, "reasonCode", "rate_limited")
    assert len(again) == 2
    assert len(publisher.sent) == 2


async def test_with_no_rate_set_every_event_of_a_customer_is_taken(tmp_path: Path) -> None:
    publisher = _configure(tmp_path, INGRESS_BURST="1", INGRESS_RATE_PER_MINUTE="0")
    events = [
        stored_event(json.dumps({**REQUEST, "text": f"n{n}"}).encode(), sequence=n + 1)
        for n in range(5)
    ]
    await app_functions()["ingest"](hub_batch(events))
    assert len(publisher.sent) == 5
    statuses = [(await post({**REQUEST, "text": f"h{n}"})).status_code for n in range(3)]
    assert statuses == [202, 202, 202]
