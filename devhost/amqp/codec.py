"""AMQP messages to and from the broker's records.

Proton decodes and encodes single messages; this module adds what Azure's dialect needs on top:
splitting a batch transfer (Azure's batch format, a message whose body is a run of data
sections, each one an encoded message) and building the annotated messages Service Bus
receivers expect.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from proton import UNDESCRIBED, Array, Condition, Data, Described, Message, symbol, timestamp, ulong

from devhost.broker import DeadLetter, PropertyValue, ReceivedMessage

# Descriptor codes of the message sections (AMQP 1.0 part 3, section 3.2).
HEADER: Final = 0x70
DELIVERY_ANNOTATIONS: Final = 0x71
MESSAGE_ANNOTATIONS: Final = 0x72
PROPERTIES: Final = 0x73
APPLICATION_PROPERTIES: Final = 0x74
DATA: Final = 0x75
AMQP_SEQUENCE: Final = 0x76
AMQP_VALUE: Final = 0x77
FOOTER: Final = 0x78

X_OPT_SEQUENCE_NUMBER: Final = symbol("x-opt-sequence-number")
X_OPT_ENQUEUED_TIME: Final = symbol("x-opt-enqueued-time")
X_OPT_LOCKED_UNTIL: Final = symbol("x-opt-locked-until")
X_OPT_LOCK_TOKEN: Final = symbol("x-opt-lock-token")
X_OPT_SCHEDULED_ENQUEUE_TIME: Final = symbol("x-opt-scheduled-enqueue-time")
X_OPT_PARTITION_KEY: Final = symbol("x-opt-partition-key")
X_OPT_VIA_PARTITION_KEY: Final = symbol("x-opt-via-partition-key")
X_OPT_OFFSET: Final = symbol("x-opt-offset")
X_OPT_PARTITION_ID: Final = symbol("x-opt-partition-id")

DEAD_LETTER_REASON: Final = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION: Final = "DeadLetterErrorDescription"


class Refused(Exception):
    """A request devhost answers with an AMQP error: ``condition`` and a description."""

    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


NOT_IMPLEMENTED: Final = "amqp:not-implemented"
INVALID_FIELD: Final = "amqp:invalid-field"
DECODE_ERROR: Final = "amqp:decode-error"
SIZE_EXCEEDED: Final = "amqp:link:message-size-exceeded"
NOT_ALLOWED: Final = "amqp:not-allowed"
SERVER_BUSY: Final = "com.microsoft:server-busy"


@dataclass(frozen=True)
class Inbound:
    """A message a client sent, reduced to what the broker stores."""

    body: bytes
    message_id: str
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: dict[str, PropertyValue]
    scheduled_enqueue_time: float | None
    partition_key: str | None
    ttl_s: float | None
    session_id: str | None


def sections(payload: bytes) -> list[tuple[int, Any]]:
    """The top-level described sections of an encoded message, in order."""
    found: list[tuple[int, Any]] = []
    view = memoryview(payload)
    offset = 0
    while offset < len(view):
        data = Data()
        try:
            used = data.decode(bytes(view[offset:]))
        except Exception as error:  # proton raises its own DataException subclasses
            raise Refused(DECODE_ERROR, f"the message cannot be decoded: {error}") from None
        if used <= 0:
            raise Refused(DECODE_ERROR, "the message cannot be decoded")
        offset += used
        data.rewind()
        data.next()
        try:
            value: Any = data.get_object()
        except Exception as error:  # an invalid value inside the section
            raise Refused(DECODE_ERROR, f"the message cannot be decoded: {error}") from None
        if not isinstance(value, Described) or not isinstance(value.descriptor, int):
            raise Refused(DECODE_ERROR, "a message section is not a described value")
        inner: Any = value.value
        if isinstance(inner, memoryview):
            inner = bytes(inner)  # the view points into ``data``, which is freed after this
        found.append((int(value.descriptor), inner))
    return found


def split_batch(payload: bytes) -> list[bytes] | None:
    """The encoded messages of an Azure batch transfer, or None when ``payload`` is one message.

    A batch (message format 0x80013700) is an envelope of data sections that each hold a
    complete encoded message; the envelope may repeat the first message's properties (Service
    Bus) or carry message annotations such as the partition key (Event Hubs, see
    :func:`batch_annotations`), never application properties or a value body. Proton does not
    report the transfer's message format, so the shape decides: an envelope like that whose
    data sections all decode as complete messages is a batch. (A single message whose body is
    itself an encoded AMQP message would be taken for a batch of one.)
    """
    found = sections(payload)
    kinds = {code for code, _ in found}
    if DATA not in kinds or not kinds <= {HEADER, MESSAGE_ANNOTATIONS, PROPERTIES, DATA}:
        return None
    parts = [bytes(value) for code, value in found if code == DATA]
    for part in parts:
        if len(part) < 3 or part[:2] != b"\x00\x53" or not HEADER <= part[2] <= FOOTER:
            return None  # not an encoded message: a body
        try:
            inner = sections(part)
        except Refused:
            return None
        if not inner or any(code < HEADER or code > FOOTER for code, _ in inner):
            return None
    return parts


def batch_annotations(payload: bytes) -> dict[Any, Any]:
    """The message annotations of a batch transfer's envelope (Event Hubs: the partition key)."""
    for code, value in sections(payload):
        if code == MESSAGE_ANNOTATIONS and isinstance(value, dict):
            return value
    return {}


def error(condition: str, description: str) -> Condition:
    """An AMQP error with every field present, as Service Bus sends them.

    Proton omits trailing fields that are null, which AMQP allows; some clients read the error
    list by position, so the description is never empty and ``info`` always holds the
    request's tracking id (as Service Bus errors do).
    """
    return Condition(
        symbol(condition),
        description or condition,
        {symbol("com.microsoft:tracking-id"): uuid.uuid4().hex},
    )


def decode(payload: bytes) -> Message:
    """One encoded message; :class:`Refused` when it cannot be decoded."""
    message = Message()
    try:
        message.decode(payload)
    except Exception as error:  # proton's MessageException and friends
        raise Refused(DECODE_ERROR, f"the message cannot be decoded: {error}") from None
    return message


def body_bytes(message: Message, payload: bytes) -> bytes:
    """The body of a message whose body is data sections (what every Azure SDK sends)."""
    parts = [bytes(value) for code, value in sections(payload) if code == DATA]
    if parts:
        return b"".join(parts)
    if any(code in (AMQP_VALUE, AMQP_SEQUENCE) for code, _ in sections(payload)):
        raise Refused(
            NOT_IMPLEMENTED,
            "devhost stores message bodies as bytes: send the body as data (amqp-value and"
            " amqp-sequence bodies are not supported)",
        )
    return b""


def text(value: Any) -> str | None:
    """An AMQP string, symbol, binary or id as text; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, symbol) and value == "None":
        return None  # Proton reports an absent content type as the symbol 'None'

    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _epoch(value: Any) -> float | None:
    """An AMQP timestamp (milliseconds) or a datetime as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return float(value.timestamp())
    if isinstance(value, int | float):
        return float(value) / 1000.0
    raise Refused(INVALID_FIELD, f"expected a timestamp, got {type(value).__name__}")


def properties_of(message: Message) -> dict[str, PropertyValue]:
    """The application properties the broker can store: strings, integers, floats, booleans."""
    result: dict[str, PropertyValue] = {}
    properties: dict[Any, Any] = message.properties or {}
    for key, value in properties.items():
        name = text(key) or ""
        if isinstance(value, bool | int | float | str):
            result[name] = value if not isinstance(value, symbol) else str(value)
        else:
            raise Refused(
                NOT_IMPLEMENTED,
                f"application property {name!r} is a {type(value).__name__}; devhost stores"
                " strings, integers, floats and booleans",
            )
    return result


def inbound(message: Message, payload: bytes) -> Inbound:
    """What the broker stores of ``message``; :class:`Refused` for what it cannot keep."""
    annotations: dict[Any, Any] = message.annotations or {}
    for field, value in (
        ("reply_to", message.reply_to),
        ("to", message.address),
        ("reply_to_session_id", message.reply_to_group_id),
    ):
        if value:
            raise Refused(NOT_IMPLEMENTED, f"devhost does not store {field} on messages")
    ttl_s = float(message.ttl) if message.ttl else None
    if ttl_s is None and message.expiry_time:
        created = message.creation_time or 0.0
        ttl_s = max(0.0, float(message.expiry_time) - float(created))
    message_id = text(message.id) or uuid.uuid4().hex
    key = annotations.get(X_OPT_PARTITION_KEY)
    return Inbound(
        body=body_bytes(message, payload),
        message_id=message_id,
        correlation_id=text(message.correlation_id),
        subject=text(message.subject),
        content_type=text(message.content_type),
        application_properties=properties_of(message),
        scheduled_enqueue_time=_epoch(annotations.get(X_OPT_SCHEDULED_ENQUEUE_TIME)),
        partition_key=text(key),
        ttl_s=ttl_s,
        session_id=text(message.group_id),
    )


def amqp_timestamp(epoch_s: float) -> timestamp:
    """Epoch seconds as an AMQP timestamp (milliseconds)."""
    return timestamp(round(epoch_s * 1000))


def received_message(
    record: ReceivedMessage | DeadLetter,
    *,
    locked_until: float | None = None,
    extra_properties: Mapping[str, PropertyValue] | None = None,
) -> bytes:
    """Encode a stored message the way Service Bus delivers it.

    The header's delivery count is the number of earlier deliveries (AMQP's definition), so a
    first delivery carries 0; the broker counts the delivery in progress too.
    """
    annotations: dict[symbol, Any] = {
        X_OPT_SEQUENCE_NUMBER: record.sequence_number,
        X_OPT_ENQUEUED_TIME: amqp_timestamp(record.enqueued_time),
    }
    if locked_until:
        annotations[X_OPT_LOCKED_UNTIL] = amqp_timestamp(locked_until)
    scheduled = getattr(record, "scheduled_enqueue_time", None)
    if scheduled:
        annotations[X_OPT_SCHEDULED_ENQUEUE_TIME] = amqp_timestamp(scheduled)
    properties: dict[str, Any] = dict(record.application_properties)
    if extra_properties:
        properties.update(extra_properties)
    message = Message(
        body=bytes(record.body),
        id=record.message_id,
        correlation_id=record.correlation_id,
        subject=record.subject,
        content_type=symbol(record.content_type) if record.content_type else None,
        properties=properties or None,
        annotations=annotations,
    )
    message.inferred = True
    expires_at = getattr(record, "expires_at", None)
    ttl_ms = None
    if expires_at is not None:
        ttl_ms = max(0, round((expires_at - (scheduled or record.enqueued_time)) * 1000))
    count = max(0, record.delivery_count - 1)
    return header(durable=True, delivery_count=count, ttl_ms=ttl_ms) + _headless(
        bytes(message.encode())
    )


def _headless(encoded: bytes) -> bytes:
    """``encoded`` without the (empty) header section Proton writes first."""
    if encoded.startswith(b"\x00Sp"):
        data = Data()
        used = data.decode(encoded)
        return encoded[used:]
    return encoded


def header(*, durable: bool, delivery_count: int, ttl_ms: int | None = None) -> bytes:
    """An encoded header section with every field present.

    Proton leaves out fields that hold their default (a delivery count of 0), which AMQP
    allows; some clients read the header by position and take an absent count for none, so
    this header spells every field out.
    """
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(HEADER)
    data.put_list()
    data.enter()
    data.put_bool(durable)
    data.put_ubyte(4)  # priority: the default
    if ttl_ms is None:
        data.put_null()
    else:
        data.put_uint(min(ttl_ms, 2**32 - 1))
    data.put_bool(False)  # first-acquirer
    data.put_uint(delivery_count)
    data.exit()
    data.exit()
    return bytes(data.encode())


def lock_tag(lock_token: str) -> bytes:
    """The delivery tag of a peek-locked delivery: the lock token's 16 bytes, as Service Bus
    sends them (the SDKs read it as a little-endian GUID)."""
    return uuid.UUID(lock_token).bytes_le


def token_of_tag(tag: bytes) -> str:
    """The lock token a delivery tag stands for."""
    return str(uuid.UUID(bytes_le=bytes(tag)))


def reply(
    request: Message,
    *,
    status: int,
    description: str,
    body: Any = None,
    code_field: str = "statusCode",
    description_field: str = "statusDescription",
    condition: str | None = None,
) -> Message:
    """A management or CBS response to ``request``."""
    properties: dict[str, Any] = {code_field: status, description_field: description}
    if condition:
        properties["errorCondition"] = symbol(condition)
    return Message(
        body=body,
        correlation_id=request.id,
        address=request.reply_to,
        properties=properties,
    )


def timestamps(values: Sequence[float]) -> Array:
    """An AMQP array of timestamps (epoch seconds in, milliseconds on the wire)."""
    return Array(cast(Any, UNDESCRIBED), Data.TIMESTAMP, *[amqp_timestamp(v) for v in values])


def strings(values: Sequence[str]) -> Array:
    """An AMQP array of strings."""
    return Array(cast(Any, UNDESCRIBED), Data.STRING, *values)


def longs(values: Sequence[int]) -> Array:
    """An AMQP array of longs."""
    return Array(cast(Any, UNDESCRIBED), Data.LONG, *values)


def elements(value: Any) -> list[Any]:
    """The items of an AMQP array or list (proton gives arrays as :class:`Array`)."""
    if value is None:
        return []
    if isinstance(value, Array):
        return list(value.elements)
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


__all__ = [
    "Inbound",
    "Refused",
    "batch_annotations",
    "decode",
    "elements",
    "inbound",
    "lock_tag",
    "longs",
    "received_message",
    "reply",
    "sections",
    "split_batch",
    "timestamps",
    "token_of_tag",
    "ulong",
]
