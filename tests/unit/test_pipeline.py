"""The pipeline through its real triggers, with a scripted model and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import azure.functions as func
import pytest

from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import MAX_TEXT_CHARS, Envelope, Stage
from shared.errors import RetryLater, SchemaViolation
from tests.conftest import make_settings
from tests.support.drive import app_functions, drain, hub_event, service_bus_message
from tests.support.fakes import (
    CONTENT_FILTERED,
    ESCALATION,
    INTENT_ANGRY,
    INTENT_REFUND,
    REPLY,
    REVISE,
    RecordingPublisher,
    ScriptedModel,
    happy_model,
)

REQUEST = {"customerId": "cust-1", "text": "Refund for order A-1001 please", "channel": "email"}


def _configure(settings: Settings, model: ScriptedModel) -> RecordingPublisher:
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=model)
    return publisher


async def _conversation(cid: str) -> dict:
    services = await bootstrap.get_services()
    view = await services.pipeline.conversation(cid)
    assert view is not None
    return view


async def _ingest(*bodies: bytes) -> None:
    events = [hub_event(b, sequence=i + 1) for i, b in enumerate(bodies)]
    await app_functions()["ingest"](events)


@pytest.fixture(autouse=True)
async def _close_services() -> None:
    yield
    await bootstrap.shutdown()


async def test_a_request_is_answered_through_every_stage_in_order(settings: Settings) -> None:
    model = happy_model()
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    cid = publisher.sent[0].correlation_id
    view = await _conversation(cid)
    assert view["status"] == "answered"
    assert [s["key"] for s in view["stages"]] == ["intent:0", "response:0", "critic:0"]
    assert view["outcome"]["reply"] == REPLY["reply"]
    assert view["tokens"]["intent"]["promptTokens"] == 100
    assert view["tokens"]["total"]["calls"] == 3
    assert model.stages_called() == ["intent", "response", "critic"]


async def test_one_trace_id_is_carried_through_every_hop(settings: Settings) -> None:
    publisher = _configure(settings, happy_model())
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    view = await _conversation(publisher.sent[0].correlation_id)
    trace_ids = {m.application_properties["traceparent"].split("-")[1] for m in publisher.sent}
    assert trace_ids == {view["traceId"]}
    assert len(view["traceId"]) == 32


async def test_the_same_message_twice_leaves_one_record_and_sends_one_next_message(
    settings: Settings,
) -> None:
    model = happy_model()
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    intent_message = publisher.sent[0]
    agent = app_functions()["intent_agent"]
    await agent(service_bus_message(intent_message))
    before = await _conversation(intent_message.correlation_id)
    await agent(service_bus_message(intent_message, delivery_count=2))
    after = await _conversation(intent_message.correlation_id)
    assert model.stages_called() == ["intent"]
    assert before == after
    assert len(publisher.on(settings.queues.response)) == 1
    assert [m.message_id for m in publisher.dropped] == [publisher.on("response")[0].message_id]


async def test_concurrent_duplicate_deliveries_write_one_stage_record(settings: Settings) -> None:
    model = happy_model()
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    intent_message = publisher.sent[0]
    agent = app_functions()["intent_agent"]
    await asyncio.gather(*(agent(service_bus_message(intent_message)) for _ in range(4)))
    view = await _conversation(intent_message.correlation_id)
    assert [s["key"] for s in view["stages"]] == ["intent:0"]
    assert view["tokens"]["intent"]["calls"] == 1
    assert len(publisher.on(settings.queues.response)) == 1


async def test_a_resent_event_with_the_same_idempotency_key_is_one_conversation(
    settings: Settings,
) -> None:
    publisher = _configure(settings, happy_model())
    body = json.dumps({**REQUEST, "idempotencyKey": "order-A-1001-refund"}).encode()
    await _ingest(body)
    await app_functions()["ingest"]([hub_event(body, sequence=99)])
    intents = publisher.on(settings.queues.intent)
    assert len(intents) == 1
    assert len(publisher.dropped) == 1
    assert publisher.dropped[0].correlation_id == intents[0].correlation_id


async def test_bad_events_are_recorded_as_rejected_and_never_block_the_batch(
    settings: Settings,
) -> None:
    publisher = _configure(settings, happy_model())
    await _ingest(
        b"{not json",
        json.dumps({"text": "no customer"}).encode(),
        json.dumps({**REQUEST, "text": "x" * (MAX_TEXT_CHARS + 1)}).encode(),
        json.dumps(REQUEST).encode(),
    )
    assert len(publisher.on(settings.queues.intent)) == 1
    services = await bootstrap.get_services()
    rejected = await services.store.query_eq(settings.conversations_container, "status", "rejected")
    reasons = sorted(r["outcome"]["reason"] for r in rejected)
    assert sorted(r["reasonCode"] for r in rejected) == [
        "invalid_json",
        "missing_field",
        "text_too_long",
    ]
    assert any("not valid JSON" in r for r in reasons)
    assert any("customerId" in r and "missing" in r for r in reasons)
    assert any("text" in r and f"limit is {MAX_TEXT_CHARS}" in r for r in reasons)
    assert all("x" * 50 not in r for r in reasons)  # no customer text in the reason
    for record in rejected:  # a record identifies the body without holding it
        assert len(record["body"]["sha256"]) == 64
        assert len(record["body"]["excerpt"]) <= 81
        assert record["source"]["kind"] == "event"


async def test_the_revise_loop_is_bounded_then_escalates(settings: Settings) -> None:
    model = ScriptedModel(
        answers={
            "intent": [INTENT_REFUND],
            "response": [REPLY],
            "critic": [REVISE],
            "escalation": [ESCALATION],
        }
    )
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    view = await _conversation(publisher.sent[0].correlation_id)
    keys = [s["key"] for s in view["stages"]]
    assert keys == [
        "intent:0",
        "response:0",
        "critic:0",
        "response:1",
        "critic:1",
        "response:2",
        "critic:2",
        "escalation:2",
    ]
    assert view["status"] == "escalated"
    assert view["outcome"]["team"] == "billing"
    assert "revisions" in view["stages"][-2]["next"]["reason"]


async def test_a_customer_who_needs_a_person_goes_straight_to_escalation(
    settings: Settings,
) -> None:
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": [ESCALATION]})
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    view = await _conversation(publisher.sent[0].correlation_id)
    assert [s["key"] for s in view["stages"]] == ["intent:0", "escalation:0"]
    assert view["status"] == "escalated"
    escalation_call = model.calls[-1].messages[1]["content"]
    assert "needs a person" in escalation_call


async def test_content_filter_goes_to_escalation_without_a_retry(settings: Settings) -> None:
    model = ScriptedModel(answers={"intent": [CONTENT_FILTERED], "escalation": [ESCALATION]})
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    view = await _conversation(publisher.sent[0].correlation_id)
    assert model.stages_called() == ["intent", "escalation"]
    assert view["stages"][0]["error"]["reason"] == "ContentFiltered"
    assert view["status"] == "escalated"


async def test_broken_output_at_escalation_still_reaches_a_person(settings: Settings) -> None:
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": ["{", "still not json"]})
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    view = await _conversation(publisher.sent[0].correlation_id)
    assert view["status"] == "escalated"
    assert view["outcome"]["team"] == "customer_care"
    assert view["stages"][-1]["error"]["reason"] == SchemaViolation.reason_code
    assert view["stages"][-1]["usage"]["calls"] == 2  # the broken answers were still paid for


@pytest.mark.parametrize(
    ("body", "queue", "reason"),
    [
        (b"\xff\xfe not utf8", "intent", "not valid JSON"),
        (json.dumps({"v": 1, "stage": "billing"}).encode(), "intent", "stage"),
        (json.dumps({"v": 7}).encode(), "critic", "unsupported envelope version"),
    ],
    ids=["garbage", "unknown-stage", "future-version"],
)
async def test_poison_messages_are_dead_lettered_with_a_reason_and_the_body_intact(
    settings: Settings, body: bytes, queue: str, reason: str
) -> None:
    publisher = _configure(settings, happy_model())
    functions = app_functions()
    from shared.ports import OutboundMessage

    poison = OutboundMessage(queue=queue, body=body, message_id="m-1", correlation_id="")
    await functions[f"{queue}_agent"](service_bus_message(poison))
    (parked,) = publisher.on(settings.queues.deadletter)
    assert parked.body == body
    props = parked.application_properties
    assert props["DeadLetterReason"] == "InvalidInput"
    assert reason in str(props["DeadLetterErrorDescription"])
    assert props["OriginalQueue"] == queue
    assert props["OriginalMessageId"] == "m-1"


async def test_a_message_on_the_wrong_queue_is_dead_lettered(settings: Settings) -> None:
    publisher = _configure(settings, happy_model())
    await _ingest(json.dumps(REQUEST).encode())
    intent_message = publisher.sent[0]
    await app_functions()["critic_agent"](service_bus_message(intent_message))
    (parked,) = publisher.on(settings.queues.deadletter)
    assert "arrived on queue" in str(parked.application_properties["DeadLetterErrorDescription"])


async def test_a_long_quota_wait_becomes_a_scheduled_message(settings: Settings) -> None:
    model = ScriptedModel(answers={"intent": [RetryLater(42.0, "429 from gpt-4o-mini")]})
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    first = publisher.sent[0]
    await app_functions()["intent_agent"](service_bus_message(first))
    (again,) = [m for m in publisher.on(settings.queues.intent) if m is not first]
    env = Envelope.from_bytes(again.body)
    assert env.attempt == 1
    assert again.message_id.endswith(":a1")
    assert again.scheduled_enqueue_time is not None
    delay = (again.scheduled_enqueue_time - env.sent_at).total_seconds()
    assert 42.0 <= delay <= 42.0 * 1.1 + 0.01  # the wait, plus up to 10 % jitter
    view = await _conversation(first.correlation_id)
    assert view["stages"] == []


async def test_past_the_total_budget_the_message_is_dead_lettered_and_the_conversation_failed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, LLM_TOTAL_BUDGET_S="60")
    model = ScriptedModel(answers={"intent": [RetryLater(30.0, "429")]})
    publisher = _configure(settings, model)
    await _ingest(json.dumps(REQUEST).encode())
    first = publisher.sent[0]
    env = Envelope.from_bytes(first.body)
    # Three reschedules have used 45 s of the 60 s budget; this one needs 30 s more.
    old = env.model_copy(update={"waited_s": 45.0, "attempt": 3})
    await app_functions()["intent_agent"](service_bus_message(replace(first, body=old.to_bytes())))
    (parked,) = publisher.on(settings.queues.deadletter)
    assert parked.application_properties["DeadLetterReason"] == "BudgetExceeded"
    view = await _conversation(first.correlation_id)
    assert view["status"] == "failed"
    assert "budget" in view["outcome"]["description"]


async def test_batch_documents_become_one_conversation_per_valid_line(settings: Settings) -> None:
    publisher = _configure(settings, happy_model())
    lines = [
        json.dumps({"customerId": "c1", "text": "Where is order 1?", "channel": "email"}),
        "{broken",
        json.dumps({"customerId": "c2", "text": "Cancel my plan", "channel": "web"}),
        json.dumps({"customerId": "c3"}),
    ]
    data = ("\n".join(lines) + "\n").encode()
    blob = func.blob.InputStream(
        data=data, name="batches/day1.jsonl", length=len(data), blob_properties={"ETag": "0x1"}
    )
    await app_functions()["ingest_batch"](blob)
    assert len(publisher.on(settings.queues.intent)) == 2
    await drain(publisher, settings)
    services = await bootstrap.get_services()
    batch_id = Envelope.from_bytes(publisher.sent[0].body).batch_id
    assert batch_id is not None
    view = await services.pipeline.batch(batch_id)
    assert view is not None
    assert (view["total"], view["accepted"], view["rejected"]) == (4, 2, 2)
    assert [(r["line"], r["code"]) for r in view["rejections"]] == [
        (2, "invalid_json"),
        (4, "missing_field"),
    ]
    assert view["rejectedByCode"] == {"invalid_json": 1, "missing_field": 1}
    # Every row is one record: a conversation, or a rejection naming the blob and line.
    assert view["statuses"] == {"answered": 2, "rejected": 2}
    again = func.blob.InputStream(
        data=data, name="batches/day1.jsonl", blob_properties={"ETag": "0x1"}
    )
    await app_functions()["ingest_batch"](again)
    assert len(publisher.on(settings.queues.intent)) == 2  # same batch, same conversations


async def test_a_csv_batch_is_read_by_its_header(settings: Settings) -> None:
    publisher = _configure(settings, happy_model())
    data = b'customer_id,text,channel\nc1,"Hello, my card was charged twice",email\nc2,,chat\n'
    await app_functions()["ingest_batch"](
        func.blob.InputStream(data=data, name="batches/x.csv", blob_properties={"ETag": "e"})
    )
    (message,) = publisher.on(settings.queues.intent)
    env = Envelope.from_bytes(message.body)
    assert env.priority.value == "batch"
    services = await bootstrap.get_services()
    assert env.batch_id is not None
    view = await services.pipeline.batch(env.batch_id)
    assert view is not None
    assert view["rejections"][0]["line"] == 3


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("batches/a.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        ("batches/a.csv", b"name,age\nx,1\n", "lacks channel, customerId, text"),
        ("batches/a.bin", b"just words", "cannot tell the format"),
        ("batches/a.jsonl", b"\n\n", "document is empty"),
        # An unterminated quote would swallow every later row into one text.
        (
            "batches/a.csv",
            b'customer_id,text,channel\nc-1,"open quote,chat\nc-2,fine,chat\n',
            "malformed at line",
        ),
    ],
)
async def test_a_corrupt_document_is_rejected_with_a_clear_reason(
    settings: Settings, name: str, data: bytes, reason: str
) -> None:
    publisher = _configure(settings, happy_model())
    await app_functions()["ingest_batch"](
        func.blob.InputStream(data=data, name=name, blob_properties={"ETag": "e1"})
    )
    assert publisher.sent == []
    services = await bootstrap.get_services()
    batches = await services.store.query_eq(settings.batches_container, "status", "rejected")
    assert len(batches) == 1
    assert reason in batches[0]["reason"]


async def test_http_endpoints_report_health_readiness_and_state(settings: Settings) -> None:
    publisher = _configure(settings, happy_model())
    functions = app_functions()

    def get(route: str, **params: str) -> func.HttpRequest:
        return func.HttpRequest(
            "GET", f"http://localhost/api/{route}", body=b"", route_params=params
        )

    assert json.loads((await functions["health"](get("health"))).get_body()) == {"status": "ok"}
    ready = await functions["ready"](get("ready"))
    assert ready.status_code == 200
    assert json.loads(ready.get_body())["checks"] == {"store": "ok"}
    missing = await functions["get_conversation"](get("conversations/x", id="c-missing"))
    assert missing.status_code == 404
    await _ingest(json.dumps(REQUEST).encode())
    await drain(publisher, settings)
    cid = publisher.sent[0].correlation_id
    found = await functions["get_conversation"](get(f"conversations/{cid}", id=cid))
    body = json.loads(found.get_body())
    assert body["status"] == "answered"
    assert [s["stage"] for s in body["stages"]] == [
        s.value for s in (Stage.INTENT, Stage.RESPONSE, Stage.CRITIC)
    ]
    assert (await functions["get_batch"](get("batches/x", id="b-x"))).status_code == 404


async def test_readiness_names_a_missing_setting() -> None:
    bootstrap.configure(env={"STORE_BACKEND": "sqlite"})
    response = await app_functions()["ready"](
        func.HttpRequest("GET", "http://localhost/api/ready", body=b"")
    )
    assert response.status_code == 503
    assert "AZURE_OPENAI_ENDPOINT" in json.loads(response.get_body())["settings"]
