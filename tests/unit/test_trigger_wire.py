"""Trigger inputs in the Functions host's wire shape, through ``azure.functions``' converters.

On Azure the host sends the Python worker a ``TypedData`` for the trigger plus trigger metadata
built from the extension's binding data, and the worker decodes them with the converter
registered for the binding (azure-functions-python-worker
``azure_functions_worker/bindings/meta.py`` ``from_incoming_proto``). These tests feed payloads
of that shape - recorded ones from azure-functions-python-library's tests, and ones constructed
from the extensions' ``GetBindingData`` - through the same converters into the real functions,
and check that devhost builds the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum

from devhost import bindings
from devhost.appmodel import EVENT_HUB, FunctionSpec
from devhost.broker import Broker, EventSpec, ReceivedMessage
from devhost.broker.publisher import BrokerWriter
from devhost.worker import EventHubPump
from functions.ingest import to_incoming
from shared import bootstrap
from shared.config import Settings
from shared.domain.messages import Envelope
from tests.support.drive import app_functions, service_bus_message, stored_event
from tests.support.fakes import RecordingPublisher, happy_model
from tests.unit.test_worker import model_with, run_until

Collection = bindings.Collection


def traceparent(n: int) -> str:
    return f"00-{n + 1:032x}-{n + 1:016x}-01"


def request_body(n: int) -> bytes:
    return json.dumps(
        {"customerId": f"cust-{n}", "text": f"Where is order ORD-{n}?", "channel": "web"}
    ).encode()


# ------------------------------------------------------------------ constructed host payloads


def host_batch(bodies: list[bytes], properties: list[dict[str, Any]]) -> dict[str, Any]:
    """A cardinality-many, ``dataType: binary`` invocation of partition 3, sequence numbers
    40.., written out by hand from Azure/azure-sdk-for-net
    ``sdk/eventhub/Microsoft.Azure.WebJobs.Extensions.EventHubs/src/Triggers/
    EventHubTriggerBindingStrategy.cs`` (``GetBindingData``, ``AddBindingData(EventData[])``,
    ``GetSystemPropertiesForBinding``) and the host's ``TypedData`` conversion
    (Azure/azure-functions-host ``src/WebJobs.Script.Grpc/MessageExtensions/
    GrpcMessageConversionExtensions.cs`` ``ToRpc``: ``string[]`` and ``long[]`` as typed
    collections, objects and ``DateTime[]`` as JSON, nulls left out). The shape of
    ``SystemPropertiesArray`` next to ``collection_bytes`` bodies is the one the library's own
    tests decode (azure-functions-python-library ``tests/test_eventhub.py``,
    ``_generate_multiple_trigger_metadata``; azure-functions-python-worker
    ``tests/unittests/test_mock_eventhub_functions.py``,
    ``test_mock_eventhub_cardinality_many``)."""
    n = len(bodies)
    context = json.dumps(
        {
            "IsCheckpointingAfterInvocation": True,
            "FullyQualifiedNamespace": "sb-example.servicebus.windows.net",
            "EventHubName": "requests",
            "ConsumerGroup": "switchboard",
            "PartitionId": "3",
        }
    )
    system = [
        {
            "x-opt-sequence-number": 40 + i,
            "x-opt-offset": str(4096 * i),
            "x-opt-enqueued-time": "2026-12-06T21:00:00.123+00:00",
            "SequenceNumber": 40 + i,
            "Offset": 4096 * i,
            "OffsetString": str(4096 * i),
            "PartitionKey": None,
            "EnqueuedTimeUtc": "2026-12-06T21:00:00.123",
        }
        for i in range(n)
    ]
    metadata = {
        "TriggerPartitionContext": Datum(context, "json"),
        "PartitionContext": Datum(context, "json"),
        # Every PartitionKey is null: the host drops null entries, the array arrives empty.
        "PartitionKeyArray": Datum(Collection("string", []), "collection_string"),
        "OffsetArray": Datum(
            Collection("string", [str(4096 * i) for i in range(n)]), "collection_string"
        ),
        "OffsetStringArray": Datum(
            Collection("string", [str(4096 * i) for i in range(n)]), "collection_string"
        ),
        "SequenceNumberArray": Datum(
            Collection("sint64", [40 + i for i in range(n)]), "collection_sint64"
        ),
        "EnqueuedTimeUtcArray": Datum(json.dumps(["2026-12-06T21:00:00.123"] * n), "json"),
        "PropertiesArray": Datum(json.dumps(properties), "json"),
        "SystemPropertiesArray": Datum(json.dumps(system), "json"),
        "sys": Datum(
            json.dumps(
                {
                    "MethodName": "ingest",
                    "UtcNow": "2026-12-06T21:00:01.5Z",
                    "RandGuid": "db413fd6-8411-4e51-844c-c9b5345e537d",
                }
            ),
            "json",
        ),
    }
    return {"data": Datum(Collection("bytes", bodies), "collection_bytes"), "metadata": metadata}


def decode_batch(payload: dict[str, Any]) -> list[func.EventHubEvent]:
    """What the worker does with it: the registered converter's ``decode``."""
    converter = func.get_binding_registry().get("eventHubTrigger")
    assert converter is EventHubTriggerConverter
    events = converter.decode(payload["data"], trigger_metadata=payload["metadata"])
    assert isinstance(events, list)
    return events


@pytest.fixture
def publisher(settings: Settings) -> RecordingPublisher:
    recording = RecordingPublisher()
    bootstrap.configure(settings=settings, publisher=recording, llm=happy_model())
    return recording


async def test_each_event_of_a_batch_keeps_its_own_producer_trace(
    publisher: RecordingPublisher, settings: Settings
) -> None:
    """The converter gives every event the whole batch's metadata; the ingest trigger must
    take each event's traceparent from its own PropertiesArray entry. Reading a per-event
    ``Properties`` (absent on Azure for cardinality many) starts a new trace instead."""
    bodies = [request_body(i) for i in range(3)]
    events = decode_batch(host_batch(bodies, [{"traceparent": traceparent(i)} for i in range(3)]))
    assert [e.sequence_number for e in events] == [40, 41, 42]
    assert all("Properties" not in (e.metadata or {}) for e in events)

    await app_functions()["ingest"](events)
    try:
        sent = publisher.on(settings.queues.intent)
        assert len(sent) == 3
        for message in sent:
            envelope = Envelope.from_bytes(message.body)
            n = int(envelope.customer_id.removeprefix("cust-"))
            expected_trace = traceparent(n).split("-")[1]
            assert str(message.application_properties["traceparent"]).split("-")[1] == (
                expected_trace
            )
            assert (envelope.traceparent or "").split("-")[1] == expected_trace
    finally:
        await bootstrap.shutdown()


def test_event_identity_comes_from_the_batch_metadata() -> None:
    """Partition from TriggerPartitionContext, sequence number and offset from the event's
    SystemPropertiesArray entry: the identity a redelivery of the batch reproduces."""
    bodies = [b"a", b"", b"c"]  # an empty body is still an entry of collection_bytes
    events = decode_batch(host_batch(bodies, [{}, {"traceparent": traceparent(1)}, {}]))
    incoming = to_incoming(events)
    assert [i.identity for i in incoming] == ["3:40:0", "3:41:4096", "3:42:8192"]
    assert [i.body for i in incoming] == bodies
    assert [i.traceparent for i in incoming] == [None, traceparent(1), None]


def test_a_diagnostic_id_is_a_trace_context_but_a_legacy_request_id_is_not() -> None:
    properties = [{"Diagnostic-Id": traceparent(7)}, {"Diagnostic-Id": "|4bf92f35.b7ad6b71_1."}]
    events = decode_batch(host_batch([b"x", b"y"], properties))
    assert [i.traceparent for i in to_incoming(events)] == [traceparent(7), None]


def test_the_events_of_a_string_typed_batch_with_an_empty_body_are_refused() -> None:
    """Why ingest binds ``dataType: binary``: as ``collection_string`` the host drops an
    empty body (``ToRpcStringArray`` without ``IncludeEmptyEntriesInMessagePayload``) and the
    converter refuses a batch whose bodies and metadata differ in number."""
    payload = host_batch([b"a", b""], [{}, {}])
    payload["data"] = bindings.to_datum(["a", ""])
    assert payload["data"].type == "collection_string"
    with pytest.raises(AssertionError, match="mismatched"):
        decode_batch(payload)


def test_the_library_s_recorded_single_event_decodes_to_its_identity() -> None:
    """The cardinality-one metadata recorded in azure-functions-python-library
    ``tests/test_eventhub.py`` (``_generate_full_metadata``, abridged to the fields read)."""
    metadata = {
        "Offset": Datum(type="string", value="3696"),
        "EnqueuedTimeUtc": Datum(type="string", value="2020-07-14T01:27:55.627Z"),
        "SequenceNumber": Datum(type="int", value=47),
        "Properties": Datum(type="json", value=json.dumps({"traceparent": traceparent(4)})),
        "SystemProperties": Datum(
            type="json",
            value=json.dumps(
                {
                    "x-opt-sequence-number": 47,
                    "x-opt-offset": "3696",
                    "SequenceNumber": 47,
                    "Offset": "3696",
                    "PartitionKey": None,
                    "EnqueuedTimeUtc": "2020-07-14T01:27:55.627Z",
                }
            ),
        ),
        "PartitionContext": Datum(
            type="json",
            value=json.dumps(
                {
                    "ConsumerGroupName": "$Default",
                    "EventHubPath": "python-worker-ci-eventhub-one-metadata",
                    "PartitionId": "0",
                }
            ),
        ),
    }
    event = EventHubTriggerConverter.decode(
        Datum(b"body_bytes", "bytes"), trigger_metadata=metadata
    )
    [incoming] = to_incoming([event])
    assert incoming.identity == "0:47:3696"
    assert incoming.traceparent == traceparent(4)


# ------------------------------------------------------------------ devhost builds that shape

EVENT_HUB_BATCH_NAMES = {
    # EventHubTriggerBindingStrategy.GetBindingData for a batch, plus the SDK's ``sys``.
    "TriggerPartitionContext",
    "PartitionContext",
    "PartitionKeyArray",
    "OffsetArray",
    "OffsetStringArray",
    "SequenceNumberArray",
    "EnqueuedTimeUtcArray",
    "PropertiesArray",
    "SystemPropertiesArray",
    "sys",
}


def test_devhost_sends_a_batch_as_the_host_does() -> None:
    events = [
        stored_event(b"one", partition=3, sequence=7, properties={"traceparent": traceparent(0)}),
        stored_event(b"", partition=3, sequence=8, properties={"traceparent": traceparent(1)}),
    ]
    invocation = bindings.event_hub_batch(events, consumer_group="switchboard", function="ingest")
    assert set(invocation.trigger_metadata) == EVENT_HUB_BATCH_NAMES
    types = {k: d.type for k, d in invocation.trigger_metadata.items()}
    assert invocation.data.type == "collection_bytes"
    assert types["SequenceNumberArray"] == "collection_sint64"
    assert types["OffsetArray"] == types["PartitionKeyArray"] == "collection_string"
    assert types["PropertiesArray"] == types["SystemPropertiesArray"] == "json"
    decoded = invocation.decode()
    assert [e.get_body() for e in decoded] == [b"one", b""]
    assert [e.sequence_number for e in decoded] == [7, 8]
    # Like on Azure: no per-event Properties, and enqueued times without a zone.
    assert "Properties" not in decoded[0].metadata
    enqueued = decoded[0].enqueued_time
    assert enqueued is not None
    assert enqueued.tzinfo is None
    assert [(i.identity, i.traceparent) for i in to_incoming(decoded)] == [
        ("3:7:700", traceparent(0)),
        ("3:8:800", traceparent(1)),
    ]


def test_devhost_sends_a_single_event_as_the_host_does() -> None:
    event = stored_event(
        b"one", partition=1, sequence=5, properties={"traceparent": traceparent(2)}
    )
    invocation = bindings.event_hub_single(event, consumer_group="switchboard")
    assert {"Properties", "SystemProperties", "SequenceNumber", "Offset"} <= set(
        invocation.trigger_metadata
    )
    decoded = invocation.decode()
    assert isinstance(decoded, func.EventHubEvent)
    [incoming] = to_incoming([decoded])
    assert (incoming.identity, incoming.traceparent) == ("1:5:500", traceparent(2))


async def test_the_devhost_event_pump_hands_the_trigger_the_hosts_batch(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker.sqlite3") as broker:
        broker.ensure_hub("requests", partitions=1)
        broker.publish_batch(
            "requests",
            [
                EventSpec(body=request_body(i), properties={"traceparent": traceparent(i)})
                for i in range(5)
            ],
        )
        seen: list[str | None] = []

        async def handler(events: list[func.EventHubEvent]) -> None:
            seen.extend(i.traceparent for i in to_incoming(events))

        trigger = {"type": EVENT_HUB, "eventHubName": "requests", "consumerGroup": "$Default"}
        spec = FunctionSpec("ingest", EVENT_HUB, trigger, handler)
        writer = BrokerWriter(broker)
        try:
            pump = EventHubPump(spec, model_with(spec, batch=5), broker, owner="t", writer=writer)
            await run_until(pump, lambda: len(seen) == 5)
        finally:
            await writer.close()
    assert seen == [traceparent(i) for i in range(5)]


SERVICE_BUS_NAMES = {
    # ServiceBusTriggerBindingStrategy.GetBindingData for one message (nulls left out).
    "MessageReceiver",
    "MessageSession",
    "MessageActions",
    "SessionActions",
    "ReceiveActions",
    "Client",
    "DeliveryCount",
    "LockToken",
    "ExpiresAtUtc",
    "ExpiresAt",
    "EnqueuedTimeUtc",
    "EnqueuedTime",
    "MessageId",
    "ContentType",
    "SequenceNumber",
    "Subject",
    "Label",
    "CorrelationId",
    "ApplicationProperties",
    "UserProperties",
    "sys",
}


def test_devhost_sends_a_service_bus_message_as_the_host_does() -> None:
    from shared.ports import OutboundMessage

    outbound = OutboundMessage(
        queue="intent",
        body=b'{"x": 1}',
        message_id="m-1",
        correlation_id="c-1",
        subject="intent",
        application_properties={"traceparent": traceparent(3), "revision": 2},
    )
    message = service_bus_message(outbound, delivery_count=4)
    invocation_names = set(
        bindings.service_bus_invocation(
            ReceivedMessage(
                queue="intent",
                message_id="m-1",
                body=b"",
                correlation_id="c-1",
                subject="intent",
                content_type="application/json",
                application_properties={},
                delivery_count=1,
                enqueued_time=0.0,
                sequence_number=1,
                lock_token="t",
                locked_until=60.0,
                scheduled_enqueue_time=None,
            )
        ).trigger_metadata
    )
    assert invocation_names == SERVICE_BUS_NAMES
    assert (message.message_id, message.delivery_count, message.correlation_id) == ("m-1", 4, "c-1")
    assert message.application_properties == {"traceparent": traceparent(3), "revision": 2}
    assert message.get_body() == b'{"x": 1}'
    # The extension sends no LockedUntil or ScheduledEnqueueTimeUtc: None on Azure too.
    assert message.locked_until is None
    assert message.scheduled_enqueue_time_utc is None


def test_the_library_s_recorded_blob_properties_reach_the_batch_trigger() -> None:
    """Blob trigger metadata as recorded in azure-functions-python-library ``tests/test_blob.py``
    (``test_blob_input_with_metadata_with_trigger_metadata``); devhost sends the same names."""
    recorded = {
        "Metadata": Datum('{"Hello": "World"}', "json"),
        "Properties": Datum(
            json.dumps(
                {
                    "ContentType": "application/octet-stream",
                    "ETag": "0x8D8989BC453467D",
                    "ContentLength": "12",
                }
            ),
            "json",
        ),
        "BlobTrigger": Datum("batches/day-1.jsonl", "string"),
        "Uri": Datum("https://test.io/batches/day-1.jsonl", "string"),
    }
    converter = func.get_binding_registry().get("blobTrigger")
    stream = converter.decode(Datum(b"blob_content", "bytes"), trigger_metadata=recorded)
    assert (stream.name, stream.length, stream.blob_properties["ETag"]) == (
        "batches/day-1.jsonl",
        12,
        "0x8D8989BC453467D",
    )
    devhost = bindings.blob_invocation("batches", "day-1.jsonl", b"blob_content", '"0x1"')
    assert set(recorded) <= set(devhost.trigger_metadata)
    mine = devhost.decode()
    assert (mine.name, mine.length, mine.blob_properties["ETag"]) == (
        "batches/day-1.jsonl",
        12,
        '"0x1"',
    )
    assert mine.read() == b"blob_content"


async def test_devhost_sends_an_http_request_as_the_host_does() -> None:
    """``ToRpcHttp``: header names lower-cased, a query parameter with an empty value left out
    (the Python worker does not ask for nullable dictionaries), the body as bytes."""
    request = bindings.http_request(
        method="GET",
        url="http://127.0.0.1:7071/api/health?verbose=&x=1",
        headers={"X-Functions-Key": "k", "Accept": "application/json"},
        query={"verbose": "", "x": "1"},
        route_params={},
        body=b"",
    )
    assert dict(request.params) == {"x": "1"}
    assert request.headers.get("x-functions-key") == "k"
    assert request.get_body() == b""
    response = await app_functions()["health"](request)
    assert response.status_code == 200
