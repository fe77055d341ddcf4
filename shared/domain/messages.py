"""The request schema producers use and the one versioned envelope every queue hop carries."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from shared.errors import InvalidInput, OversizeMessage

if TYPE_CHECKING:
    from shared.ports import OutboundMessage, PropertyValue

ENVELOPE_VERSION = 1
MAX_TEXT_CHARS = 8000
SERVICE_BUS_MAX_BYTES = 256 * 1024
"""The largest message a Service Bus Standard-tier queue accepts, properties included."""
EVENT_HUBS_MAX_BYTES = 1024 * 1024
"""The largest event an Event Hub (Standard tier) accepts."""

MAX_HEADER_BYTES = 64 * 1024
"""Service Bus caps a message's properties (system and application) at 64 KB on every tier."""

MESSAGE_OVERHEAD_BYTES = 1024
"""Room for what the estimate does not count byte by byte: the AMQP section descriptors, the
header and annotations the SDK adds (scheduled enqueue time), and the broker's own properties
(sequence number, enqueued time, lock token) that count against the limit once the message is
stored. Measured AMQP framing for a message of this pipeline is a few dozen bytes."""

PROPERTY_OVERHEAD_BYTES = 16
"""Per property and per system field: AMQP type constructors and length prefixes (at most 10)."""

NON_STRING_VALUE_BYTES = 9
"""The largest AMQP encoding of a bool, long or double value (constructor + 8 bytes)."""


class Stage(StrEnum):
    INTENT = "intent"
    RESPONSE = "response"
    CRITIC = "critic"
    ESCALATION = "escalation"


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class Channel(StrEnum):
    EMAIL = "email"
    CHAT = "chat"
    PHONE = "phone"
    WEB = "web"
    SMS = "sms"
    SOCIAL = "social"


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
"""Customer ids, idempotency keys and conversation ids: safe in a URL, a log line and a key."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class CustomerRequest(_Model):
    """What a producer sends: one customer's message on one channel.

    ``shared.domain.request_contract`` decides what is a request; these constraints are its
    second net.
    """

    customer_id: str = Field(pattern=ID_PATTERN)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    channel: Channel
    idempotency_key: str | None = Field(default=None, pattern=ID_PATTERN)
    metadata: dict[str, Any] | None = None
    conversation_id: str | None = Field(default=None, pattern=ID_PATTERN)
    """A follow-up: the conversation (``c-…``) this message continues, as the first turn's
    ``Location`` or outcome message named it."""


def describe_validation_error(error: ValidationError) -> str:
    """A short, PII-free reason: field paths and what was wrong, never the offending values."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    more = len(error.errors()) - 5
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _position(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno} column {exc.colno}"
    return "decoding"


class Envelope(_Model):
    """The one message shape on every queue. The conversation document holds the heavy state."""

    v: Literal[1] = 1
    message_id: str
    conversation_id: str = Field(pattern=ID_PATTERN)
    customer_id: str = Field(pattern=ID_PATTERN)
    stage: Stage
    revision: int = Field(default=0, ge=0, le=100)
    turn: int = Field(default=0, ge=0)
    """Which turn of the conversation the message works on (0: the first request)."""
    priority: Priority = Priority.INTERACTIVE
    batch_id: str | None = None
    traceparent: str | None = None
    created_at: datetime
    sent_at: datetime
    attempt: int = Field(default=0, ge=0)
    first_attempt_at: datetime | None = None
    waited_s: float = Field(default=0.0, ge=0.0)
    """The delays this message has been rescheduled by so far: the retry budget spent."""
    payload: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, body: bytes | str) -> Envelope:
        """Decode a queue message, raising ``InvalidInput`` that names what is wrong."""
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"message body is not valid JSON: {_position(exc)}") from None
        if not isinstance(data, dict):
            raise InvalidInput("message body must be a JSON object")
        if data.get("v") not in (None, ENVELOPE_VERSION):
            raise InvalidInput(f"unsupported envelope version {data.get('v')!r}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(f"envelope is invalid: {describe_validation_error(exc)}") from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def short_hash(*parts: str, length: int = 24) -> str:
    """A stable, URL-safe digest of ``parts``; used for every derived identifier."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:length]


def conversation_id_for(customer_id: str, idempotency_key: str | None, *, fallback: str) -> str:
    """The producer's idempotency key (scoped to the customer) or the delivery's own identity.

    ``fallback`` is what makes a redelivered event the same conversation when no key is given,
    e.g. the Event Hub partition and sequence number, or the batch id and line number.
    """
    if idempotency_key:
        return "c-" + short_hash("key", customer_id, idempotency_key)
    return "c-" + short_hash("delivery", fallback)


def event_identity(
    partition: str | int, sequence_number: int | None, offset: str | int | None
) -> str:
    """An Event Hub event's identity, stable across redeliveries of the same event."""
    return f"{partition}:{sequence_number}:{offset}"


MAX_MESSAGE_ID_CHARS = 128
"""The longest message id Service Bus accepts."""
REPLAY_MARK = ":replay:"


def original_message_id(message_id: str) -> str:
    """``message_id`` without the suffix :func:`replay_id` added, if any."""
    return message_id.partition(REPLAY_MARK)[0]


def replay_id(message_id: str, sequence_number: int) -> str:
    """The id a replayed dead letter is sent under, by devhost and by ``infra/dlq.py`` alike:
    its original id (without an earlier replay suffix) plus ``:replay:`` and the dead letter's
    sequence number, at most 128 characters. The id differs from the original's, so duplicate
    detection does not drop the replay; the same dead letter always gets the same id, so a
    repeated replay is dropped."""
    return f"{original_message_id(message_id)}{REPLAY_MARK}{sequence_number}"[
        -MAX_MESSAGE_ID_CHARS:
    ]


def event_fallback(identity: str) -> str:
    """The ``fallback`` of :func:`conversation_id_for` for a hub event without a key."""
    return f"event:{identity}"


def rejection_id_for(identity: str) -> str:
    """The id of the record an invalid hub event becomes."""
    return "r-" + short_hash("event", identity)


def message_id_for(
    conversation_id: str, stage: Stage, revision: int, attempt: int = 0, *, turn: int = 0
) -> str:
    """Deterministic, so that a re-sent next message is dropped by duplicate detection. A turn
    after the first has ids of its own (``<conversation>:t<turn>:<stage>:<revision>``)."""
    scope = conversation_id if turn == 0 else f"{conversation_id}:t{turn}"
    base = f"{scope}:{stage.value}:{revision}"
    return base if attempt == 0 else f"{base}:a{attempt}"


def turn_key_for(conversation_id: str, idempotency_key: str | None, *, fallback: str) -> str:
    """A follow-up's identity within its conversation: its idempotency key, or the delivery's
    own identity, so a redelivered follow-up is found again rather than run twice."""
    if idempotency_key:
        return short_hash("turn-key", conversation_id, idempotency_key)
    return short_hash("turn-delivery", conversation_id, fallback)


def estimate_header_size(msg: OutboundMessage) -> int:
    """A conservative size in bytes of the message's system and application properties."""
    size = 0
    for text in (msg.message_id, msg.correlation_id, msg.subject, msg.content_type):
        size += len(text.encode("utf-8")) + PROPERTY_OVERHEAD_BYTES
    for key, value in msg.application_properties.items():
        size += len(str(key).encode("utf-8")) + _value_size(value) + PROPERTY_OVERHEAD_BYTES
    return size


def estimate_message_size(msg: OutboundMessage) -> int:
    """A conservative size in bytes of ``msg`` as Service Bus counts it against its limit.

    It is the body, plus every property's key and value with its encoding overhead, plus a fixed
    allowance for framing and broker-added properties. It never undercounts what the SDK
    encodes (the unit tests check it against the SDK's own AMQP encoder), and overcounts by
    about ``MESSAGE_OVERHEAD_BYTES``, which is 0.4% of the Standard tier's 256 KB limit.
    """
    return len(msg.body) + estimate_header_size(msg) + MESSAGE_OVERHEAD_BYTES


def check_message_size(msg: OutboundMessage, max_bytes: int = SERVICE_BUS_MAX_BYTES) -> int:
    """Return the estimated size of ``msg``; raise ``OversizeMessage`` if it would be refused.

    Every ``Publisher`` calls it before sending (the Service Bus adapter and the devhost
    broker's alike), so a message too large for Azure is refused the same way locally.
    """
    header = estimate_header_size(msg)
    if header > MAX_HEADER_BYTES:
        raise OversizeMessage(
            f"message {msg.message_id} for queue {msg.queue}: its properties take about "
            f"{header} bytes, over the {MAX_HEADER_BYTES}-byte header limit"
        )
    size = estimate_message_size(msg)
    if size > max_bytes:
        raise OversizeMessage(
            f"message {msg.message_id} for queue {msg.queue} is about {size} bytes, over the "
            f"{max_bytes}-byte limit; send a blob reference instead of the document"
        )
    return size


def _value_size(value: PropertyValue) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return NON_STRING_VALUE_BYTES
