"""Every message ends in an outcome: transient means later, permanent means once.

Runs the real triggers through the composition root with a scripted model, a real SQLite store
and a recording publisher; ``drain`` delivers re-sent (scheduled) messages as the broker would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared import bootstrap
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import Settings
from shared.domain.messages import Envelope
from shared.errors import CircuitOpen, PermanentError, TransientError
from shared.ports import Doc
from shared.service.pipeline import MAX_DELIVERY_COUNT
from tests.support.drive import app_functions, drain, hub_event, service_bus_message
from tests.support.fakes import (
    INTENT_REFUND,
    REPLY,
    RecordingPublisher,
    ScriptedModel,
    happy_model,
)

REQUEST = {"customerId": "cust-9", "text": "Where is my refund for A-77?", "channel": "chat"}


@pytest.fixture(autouse=True)
async def _close_services() -> Any:
    yield
    await bootstrap.shutdown()


async def _start(settings: Settings, model: ScriptedModel, **overrides: Any) -> RecordingPublisher:
    publisher = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=publisher, llm=model, **overrides)
    await app_functions()["ingest"]([hub_event(json.dumps(REQUEST).encode(), sequence=1)])
    return publisher


async def _view(cid: str) -> dict[str, Any]:
    services = await bootstrap.get_services()
    view = await services.pipeline.conversation(cid)
    assert view is not None
    return view


def _flaky(errors: list[Exception]) -> ScriptedModel:
    """The happy model, but the first calls fail with ``errors`` in turn."""
    happy = happy_model()
    pending: Iterator[Exception] = iter(errors)

    def script(request: Any) -> Any:
        failure = next(pending, None)
        if failure is not None:
            return failure
        options = happy.answers[request.stage]
        return options[0]

    return ScriptedModel(script=script)


async def test_an_open_circuit_reschedules_after_its_interval_instead_of_burning_deliveries(
    settings: Settings,
) -> None:
    publisher = await _start(settings, _flaky([CircuitOpen("gpt-4o-mini", 0.0)]))
    first = publisher.sent[0]
    await app_functions()["intent_agent"](service_bus_message(first))
    again = publisher.sent[-1]
    assert again.queue == settings.queues.intent
    assert again.message_id.endswith(":a1")  # a new attempt, not a redelivery
    assert again.scheduled_enqueue_time is not None
    env = Envelope.from_bytes(again.body)
    # "retry in 0.0s" used to be redelivered at once, ten times in 86 ms; now it backs off.
    assert env.waited_s >= 2.0
    await drain(publisher, settings)
    assert (await _view(first.correlation_id))["status"] == "answered"


async def test_a_model_outage_ends_with_every_conversation_answered(settings: Settings) -> None:
    # Six failures in a row: each backoff doubles (2, 4, 8, 16, 32, 60 s), well within budget.
    outage: list[Exception] = [TransientError("HTTP 503")] * 6
    publisher = await _start(settings, _flaky(outage))
    await drain(publisher, settings)
    cid = publisher.sent[0].correlation_id
    view = await _view(cid)
    assert view["status"] == "answered"
    delays = [
        Envelope.from_bytes(m.body).waited_s for m in publisher.sent if m.scheduled_enqueue_time
    ]
    assert len(delays) == 6
    steps = [b - a for a, b in zip([0.0, *delays], delays, strict=False)]
    for step, base in zip(steps, [2, 4, 8, 16, 32, 60], strict=True):
        assert base <= step <= base * 1.1 + 1e-6  # the backoff plus up to 10 % jitter


async def test_a_request_the_model_refuses_as_bad_fails_the_conversation_at_once(
    settings: Settings,
) -> None:
    model = ScriptedModel(answers={"intent": [PermanentError("HTTP 400 invalid_request_error")]})
    publisher = await _start(settings, model)
    await drain(publisher, settings)
    assert len(model.calls) == 1  # once, not ten deliveries' worth
    (parked,) = publisher.on(settings.queues.deadletter)
    assert parked.application_properties["DeadLetterReason"] == "PermanentError"
    view = await _view(publisher.sent[0].correlation_id)
    assert view["status"] == "failed"
    assert "HTTP 400" in view["outcome"]["description"]


async def test_an_agent_that_crashes_on_an_input_fails_the_conversation_once(
    settings: Settings,
) -> None:
    # Not JSON at all where the schema wants an object: the agent's parser handles that; a
    # KeyError escaping the model port is what an unclassified bug looks like.
    model = ScriptedModel(answers={"intent": [KeyError("label")]})
    publisher = await _start(settings, model)
    await drain(publisher, settings)
    assert len(model.calls) == 1
    (parked,) = publisher.on(settings.queues.deadletter)
    assert parked.application_properties["DeadLetterReason"] == "AgentCrashed"
    view = await _view(publisher.sent[0].correlation_id)
    assert (view["status"], view["outcome"]["reason"]) == ("failed", "AgentCrashed")


@dataclass
class BrokenStore:
    """The real SQLite store whose conditional writes fail with an unclassified error, as a
    store with a fault nobody mapped would."""

    inner: SqliteDocumentStore
    failures: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def replace(self, container: str, doc: Doc, *, etag: str) -> Doc:
        if doc.get("status") != "failed":
            self.failures.append(doc["id"])
            raise OSError("disk I/O error")
        return await self.inner.replace(container, doc, etag=etag)


async def test_an_unclassified_failure_is_retried_then_ends_failed_on_the_last_delivery(
    settings: Settings,
) -> None:
    store = BrokenStore(
        SqliteDocumentStore(settings.sqlite_path, partition_keys=settings.container_partition_keys)
    )
    model = ScriptedModel(answers={"intent": [INTENT_REFUND], "response": [REPLY]})
    publisher = await _start(settings, model, store=store)
    first = publisher.sent[0]
    trigger = app_functions()["intent_agent"]
    for delivery in range(1, MAX_DELIVERY_COUNT):
        with pytest.raises(OSError, match="disk I/O"):  # abandoned: the platform redelivers
            await trigger(service_bus_message(first, delivery_count=delivery))
    assert publisher.on(settings.queues.deadletter) == []
    await trigger(service_bus_message(first, delivery_count=MAX_DELIVERY_COUNT))
    (parked,) = publisher.on(settings.queues.deadletter)
    assert "delivery 10 of 10" in parked.application_properties["DeadLetterErrorDescription"]
    view = await _view(first.correlation_id)
    assert view["status"] == "failed"
    assert len(store.failures) == MAX_DELIVERY_COUNT
    await store.inner.close()


async def test_the_retry_budget_does_not_depend_on_the_wall_clock(settings: Settings) -> None:
    # A message that was first tried two hours "ago" (a forward clock jump) but has waited
    # only 10 s is rescheduled, not failed as it used to be ("gave up after 7228s").
    publisher = await _start(settings, _flaky([TransientError("timeout")]))
    first = publisher.sent[0]
    env = Envelope.from_bytes(first.body)
    jumped = env.model_copy(
        update={"first_attempt_at": env.sent_at - timedelta(hours=2), "waited_s": 10.0}
    )
    await app_functions()["intent_agent"](
        service_bus_message(replace(first, body=jumped.to_bytes()))
    )
    assert publisher.on(settings.queues.deadletter) == []
    assert publisher.sent[-1].scheduled_enqueue_time is not None


def test_the_last_delivery_is_the_one_every_queue_is_configured_with() -> None:
    # The pipeline fails a conversation on the last delivery; infra (Bicep) and devhost both
    # take every queue's maxDeliveryCount from scale.json, so the three must agree.
    scale = json.loads((Path(__file__).resolve().parents[2] / "scale.json").read_text())
    assert scale["queues"]["maxDeliveryCount"] == MAX_DELIVERY_COUNT
