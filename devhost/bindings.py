"""Trigger inputs in the shape the Functions host sends them, decoded by ``azure.functions``.

On Azure the Functions host hands the Python worker each invocation as an ``InvocationRequest``:
the trigger's ``ParameterBinding`` (one ``TypedData``) plus ``trigger_metadata`` (name ->
``TypedData``), made from the trigger extension's binding data. The worker turns every
``TypedData`` into a ``Datum`` (azure-functions-python-worker,
``azure_functions_worker/bindings/datumdef.py``, ``Datum.from_typed_data``) and calls the
converter registered for the binding type: ``binding.decode(datum, trigger_metadata=metadata)``
(``azure_functions_worker/bindings/meta.py``, ``from_incoming_proto``). devhost builds the same
two things from what its broker delivers and goes through the same converters, so a function
sees exactly the objects, and only the fields, it would see on Azure. How the decoded value
is then passed to the function (with its ``func.Context``) is :mod:`devhost.invocation`.

Sources of the wire shapes (all of Azure/azure-sdk-for-net unless said otherwise):

- Event Hubs: ``sdk/eventhub/Microsoft.Azure.WebJobs.Extensions.EventHubs/src/Triggers/
  EventHubTriggerBindingStrategy.cs`` (``GetBindingData``): ``TriggerPartitionContext`` and
  ``PartitionContext``; per event (cardinality one) ``PartitionKey``, ``Offset``,
  ``OffsetString``, ``SequenceNumber``, ``EnqueuedTimeUtc``, ``Properties``,
  ``SystemProperties``; for a batch (cardinality many) the same names with ``Array`` appended.
- Service Bus: ``sdk/servicebus/Microsoft.Azure.WebJobs.Extensions.ServiceBus/src/Triggers/
  ServiceBusTriggerBindingStrategy.cs`` (the Azure.Messaging.ServiceBus based extension).
  It sends no ``LockedUntil``, ``ScheduledEnqueueTimeUtc`` or ``DeadLetterReason``, so a
  function on Azure sees ``None`` there, and so does one on devhost.
- Blob: ``BlobTrigger`` (``container/name``), ``Uri``, ``Properties``, ``Metadata`` and the
  path's route parameters; the recorded shape is in azure-functions-python-library
  ``tests/test_blob.py`` (``test_blob_input_with_metadata_with_trigger_metadata``).
- HTTP: azure-functions-host ``src/WebJobs.Script.Grpc/MessageExtensions/
  GrpcMessageConversionExtensions.cs`` (``ToRpcHttp``); the Python worker declares
  ``RpcHttpTriggerMetadataRemoved``, ``RpcHttpBodyOnly`` and ``RawHttpBodyBytes``
  (``azure_functions_worker/dispatcher.py``), so the request has no trigger metadata and its
  body is bytes.
- How a binding-data value becomes ``TypedData``: ``GrpcMessageConversionExtensions.ToRpc``
  (strings stay strings, ``byte[]`` bytes, ``string[]``/``long[]``/``byte[][]`` typed
  collections since the worker declares ``TypedDataCollection``, everything else JSON through
  Newtonsoft), and null values are left out (``ScriptInvocationContextExtensions.
  ToRpcInvocationRequest``).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import azure.functions as func
from azure.functions.meta import Datum
from azure.functions.servicebus import ServiceBusMessage

from devhost.broker import ReceivedMessage, StoredEvent
from devhost.invocation import (
    InvocationContext,
    UserFunction,
    as_the_worker_calls,
    host_trace_parent,
)

EVENT_HUB_TRIGGER = "eventHubTrigger"
SERVICE_BUS_TRIGGER = "serviceBusTrigger"
BLOB_TRIGGER = "blobTrigger"
HTTP_TRIGGER = "httpTrigger"

NAMESPACE = "devhost.localhost"
"""The fully qualified namespace devhost's hubs and queues report (on Azure
``<namespace>.servicebus.windows.net``)."""


class Collection:
    """A typed collection as the protobuf ``CollectionBytes``/``CollectionString``/
    ``CollectionSInt64`` messages present it to a converter (``.bytes``, ``.string``,
    ``.sint64``)."""

    def __init__(self, attribute: str, items: Sequence[Any]) -> None:
        setattr(self, attribute, list(items))


@dataclass(frozen=True)
class HostInvocation:
    """What the host sends for one trigger invocation: the trigger's data and its metadata,
    each already turned into a ``Datum`` as the worker does."""

    binding: str
    data: Datum
    trigger_metadata: dict[str, Datum] = field(default_factory=dict)

    def decode(self) -> Any:
        """The binding value, through the converter ``azure.functions`` registers for the
        binding type, called as the worker calls it."""
        registry: Any = func.get_binding_registry()  # type: ignore[no-untyped-call]
        converter = registry.get(self.binding)
        if converter is None:
            raise LookupError(f"azure.functions has no converter for {self.binding!r}")
        return converter.decode(self.data, trigger_metadata=self.trigger_metadata)


def _dotnet_datetime(value: dt.datetime) -> str:
    """A datetime as Newtonsoft.Json writes it: ``.DateTime`` of a ``DateTimeOffset`` has
    ``DateTimeKind.Unspecified`` and is written with no zone; a ``DateTimeOffset`` keeps its
    offset. devhost passes the first as a naive UTC datetime, the second as an aware one."""
    text = value.replace(tzinfo=None).isoformat(timespec="microseconds").rstrip("0").rstrip(".")
    offset = value.utcoffset()
    if offset is None:
        return text
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _dotnet_datetime(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_datum(value: Any) -> Datum | None:
    """``GrpcMessageConversionExtensions.ToRpc`` followed by ``Datum.from_typed_data``: the
    ``Datum`` the worker makes of one binding-data value, or None for a null (left out)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return Datum(value, "bytes")
    if isinstance(value, str):
        return Datum(value, "string")
    if isinstance(value, float):
        return Datum(value, "double")
    if isinstance(value, list) and value:
        if all(isinstance(v, bytes) for v in value):
            return Datum(Collection("bytes", value), "collection_bytes")
        if all(isinstance(v, str) or v is None for v in value):
            # Without IncludeEmptyEntriesInMessagePayload (the Python worker does not declare
            # it) empty and null entries are dropped: such an array does not line up with
            # the events, which is why nothing reads one by index.
            kept = [v for v in value if v]
            return Datum(Collection("string", kept), "collection_string")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return Datum(Collection("sint64", value), "collection_sint64")
    # int, bool, datetime, dictionaries, arrays of objects: Newtonsoft JSON.
    return Datum(json.dumps(value, default=_json_default, separators=(",", ":")), "json")


def trigger_metadata(binding_data: Mapping[str, Any]) -> dict[str, Datum]:
    """Trigger metadata from binding data: every non-null value, as its ``Datum``."""
    metadata: dict[str, Datum] = {}
    for name, value in binding_data.items():
        datum = to_datum(value)
        if datum is not None:
            metadata[name] = datum
    return metadata


def _sys(method: str) -> dict[str, Any]:
    """The ``sys`` binding data the WebJobs SDK adds to every invocation."""
    return {
        "MethodName": method,
        "UtcNow": dt.datetime.now(dt.UTC),
        "RandGuid": str(uuid.uuid4()),
    }


def _utc(epoch: float | None, *, aware: bool = False) -> dt.datetime | None:
    """An epoch as ``DateTimeOffset`` (aware) or as its ``.DateTime`` (naive UTC)."""
    if epoch is None:
        return None
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment if aware else moment.replace(tzinfo=None)


# --- Event Hubs ---------------------------------------------------------------------------


def _partition_context(hub: str, consumer_group: str, partition: int) -> dict[str, Any]:
    """``TriggerPartitionContext`` (a ``PartitionContext`` with one more property), as JSON."""
    return {
        "IsCheckpointingAfterInvocation": True,
        "FullyQualifiedNamespace": NAMESPACE,
        "EventHubName": hub,
        "ConsumerGroup": consumer_group,
        "PartitionId": str(partition),
    }


def _system_properties(event: StoredEvent) -> dict[str, Any]:
    """``GetSystemPropertiesForBinding``: the AMQP annotations, then SequenceNumber, Offset
    (a long), OffsetString, PartitionKey and EnqueuedTimeUtc."""
    enqueued = _utc(event.enqueued_time)
    props: dict[str, Any] = {
        "x-opt-sequence-number": event.sequence_number,
        "x-opt-offset": event.offset,
        "x-opt-enqueued-time": _utc(event.enqueued_time, aware=True),
    }
    if event.partition_key is not None:
        props["x-opt-partition-key"] = event.partition_key
    props.update(
        SequenceNumber=event.sequence_number,
        Offset=_offset(event.offset),
        OffsetString=event.offset,
        PartitionKey=event.partition_key,
        EnqueuedTimeUtc=enqueued,
    )
    return props


def _offset(offset: str) -> int:
    """The offset as a long; -1 ("beginning of stream") when it does not parse, as the
    extension does."""
    try:
        return int(offset)
    except ValueError:
        return -1


def event_hub_batch(
    events: Sequence[StoredEvent], *, consumer_group: str, function: str = ""
) -> HostInvocation:
    """A cardinality-many invocation with ``dataType: binary``: the bodies as
    ``collection_bytes`` (an empty body stays an entry) and the ``...Array`` metadata."""
    if not events:
        raise ValueError("an Event Hubs batch has at least one event")
    first = events[0]
    context = _partition_context(first.hub, consumer_group, first.partition_id)
    binding_data: dict[str, Any] = {
        "TriggerPartitionContext": context,
        "PartitionContext": context,
        "PartitionKeyArray": [e.partition_key for e in events],
        "OffsetArray": [str(_offset(e.offset)) for e in events],
        "OffsetStringArray": [e.offset for e in events],
        "SequenceNumberArray": [e.sequence_number for e in events],
        "EnqueuedTimeUtcArray": [_utc(e.enqueued_time) for e in events],
        "PropertiesArray": [dict(e.properties) for e in events],
        "SystemPropertiesArray": [_system_properties(e) for e in events],
        "sys": _sys(function),
    }
    bodies = Datum(Collection("bytes", [e.body for e in events]), "collection_bytes")
    return HostInvocation(EVENT_HUB_TRIGGER, bodies, trigger_metadata(binding_data))


def event_hub_single(
    event: StoredEvent, *, consumer_group: str, function: str = ""
) -> HostInvocation:
    """A cardinality-one invocation with ``dataType: binary``."""
    context = _partition_context(event.hub, consumer_group, event.partition_id)
    binding_data: dict[str, Any] = {
        "TriggerPartitionContext": context,
        "PartitionContext": context,
        "PartitionKey": event.partition_key,
        "Offset": str(_offset(event.offset)),
        "OffsetString": event.offset,
        "SequenceNumber": event.sequence_number,
        "EnqueuedTimeUtc": _utc(event.enqueued_time),
        "Properties": dict(event.properties),
        "SystemProperties": _system_properties(event),
        "sys": _sys(function),
    }
    return HostInvocation(
        EVENT_HUB_TRIGGER, Datum(event.body, "bytes"), trigger_metadata(binding_data)
    )


def event_hub_events(
    events: Sequence[StoredEvent], *, consumer_group: str, function: str = ""
) -> list[func.EventHubEvent]:
    """The ``list[func.EventHubEvent]`` a cardinality-many trigger receives."""
    decoded = event_hub_batch(events, consumer_group=consumer_group, function=function).decode()
    return cast(list[func.EventHubEvent], decoded)


def event_hub_event(
    event: StoredEvent, *, consumer_group: str, function: str = ""
) -> func.EventHubEvent:
    """One event delivered as a cardinality-many batch of its own."""
    return event_hub_events([event], consumer_group=consumer_group, function=function)[0]


# --- Service Bus --------------------------------------------------------------------------


def service_bus_invocation(message: ReceivedMessage, *, function: str = "") -> HostInvocation:
    """A cardinality-one Service Bus invocation: the body as bytes and the binding data of
    ``ServiceBusTriggerBindingStrategy.AddBindingData`` for one message."""
    properties = dict(message.application_properties)
    expires = message.expires_at
    binding_data: dict[str, Any] = {
        # ServiceBusMessageActions and ServiceBusClient, serialised by Newtonsoft.
        "MessageReceiver": {},
        "MessageSession": {},
        "MessageActions": {},
        "SessionActions": {},
        "ReceiveActions": {},
        "Client": {
            "FullyQualifiedNamespace": NAMESPACE,
            "IsClosed": False,
            "TransportType": 0,
        },
        "DeliveryCount": message.delivery_count,
        "DeadLetterSource": None,
        "LockToken": message.lock_token,
        # An unset TimeToLive makes ExpiresAt DateTimeOffset.MaxValue.
        "ExpiresAtUtc": _utc(expires) or dt.datetime.max.replace(microsecond=999999),
        "ExpiresAt": _utc(expires, aware=True)
        or dt.datetime.max.replace(microsecond=999999, tzinfo=dt.UTC),
        "EnqueuedTimeUtc": _utc(message.enqueued_time),
        "EnqueuedTime": _utc(message.enqueued_time, aware=True),
        "MessageId": message.message_id,
        "ContentType": message.content_type,
        "ReplyTo": None,
        "SequenceNumber": message.sequence_number,
        "To": None,
        "Subject": message.subject,
        "Label": message.subject,
        "CorrelationId": message.correlation_id,
        "ApplicationProperties": properties,
        "UserProperties": properties,
        "SessionId": None,
        "ReplyToSessionId": None,
        "PartitionKey": None,
        "TransactionPartitionKey": None,
        "sys": _sys(function),
    }
    return HostInvocation(
        SERVICE_BUS_TRIGGER, Datum(message.body, "bytes"), trigger_metadata(binding_data)
    )


def service_bus_message(message: ReceivedMessage, *, function: str = "") -> ServiceBusMessage:
    """The ``func.ServiceBusMessage`` a Service Bus trigger receives for ``message``."""
    decoded = service_bus_invocation(message, function=function).decode()
    return cast(ServiceBusMessage, decoded)


# --- Blob ---------------------------------------------------------------------------------


def blob_invocation(
    container: str, name: str, data: bytes, etag: str, *, function: str = ""
) -> HostInvocation:
    """A blob trigger invocation: the content as bytes; ``BlobTrigger``, ``Uri``,
    ``Properties`` (``BlobProperties`` as JSON), ``Metadata`` and the ``{name}`` route value."""
    binding_data: dict[str, Any] = {
        "BlobTrigger": f"{container}/{name}",
        "Uri": f"http://127.0.0.1/devstoreaccount1/{container}/{name}",
        "Properties": {
            "ContentType": "application/octet-stream",
            "ETag": etag,
            "BlobType": 0,
            "ContentLength": len(data),
        },
        "Metadata": {},
        "name": name,
        "sys": _sys(function),
    }
    return HostInvocation(BLOB_TRIGGER, Datum(data, "bytes"), trigger_metadata(binding_data))


def blob_stream(
    container: str, name: str, data: bytes, etag: str, *, function: str = ""
) -> func.InputStream:
    """The ``func.InputStream`` a blob trigger receives."""
    decoded = blob_invocation(container, name, data, etag, function=function).decode()
    return cast(func.InputStream, decoded)


# --- HTTP ---------------------------------------------------------------------------------


def http_invocation(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    route_params: Mapping[str, str],
    body: bytes,
) -> HostInvocation:
    """An HTTP trigger invocation as ``ToRpcHttp`` builds it for the Python worker: header
    names lower-cased, query parameters with an empty value left out, the body as bytes."""
    value = {
        "method": Datum(method, "string"),
        "url": Datum(url, "string"),
        "headers": {k.lower(): Datum(v, "string") for k, v in headers.items()},
        "body": Datum(body, "bytes"),
        "params": {k: Datum(v, "string") for k, v in route_params.items() if v is not None},
        "query": {k: Datum(v, "string") for k, v in query.items() if v},
    }
    return HostInvocation(HTTP_TRIGGER, Datum(value, "http"))


def http_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    route_params: Mapping[str, str],
    body: bytes,
) -> func.HttpRequest:
    """The ``func.HttpRequest`` an HTTP trigger receives."""
    invocation = http_invocation(
        method=method,
        url=url,
        headers=headers,
        query=query,
        route_params=route_params,
        body=body,
    )
    return cast(func.HttpRequest, invocation.decode())


__all__ = [
    "BLOB_TRIGGER",
    "EVENT_HUB_TRIGGER",
    "HTTP_TRIGGER",
    "NAMESPACE",
    "SERVICE_BUS_TRIGGER",
    "Collection",
    "HostInvocation",
    "InvocationContext",
    "UserFunction",
    "as_the_worker_calls",
    "blob_invocation",
    "blob_stream",
    "event_hub_batch",
    "event_hub_event",
    "event_hub_events",
    "event_hub_single",
    "host_trace_parent",
    "http_invocation",
    "http_request",
    "service_bus_invocation",
    "service_bus_message",
    "to_datum",
    "trigger_metadata",
]
