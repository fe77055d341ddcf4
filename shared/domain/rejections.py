"""Why a customer request is refused: the limits of the request contract, the stable
rejection codes, and the exception that carries one.

The rules themselves are in :mod:`shared.domain.request_contract` (fields and verdicts) and
:mod:`shared.domain.strict_json` (bytes and JSON).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NoReturn

from shared.errors import InvalidInput

MAX_BODY_BYTES = 1024 * 1024
"""The largest request body: an Event Hubs event's limit (Standard tier)."""
MAX_DEPTH = 10
"""Nesting depth of the body; the request object is level 1, so metadata nests 8 more levels."""
MAX_KEYS = 256
"""Object keys in the whole body."""
MAX_ITEMS = 1024
"""Array items in the whole body."""
MAX_NUMBER_CHARS = 32
"""The longest number literal; longer ones cannot round-trip through a double anyway."""
MAX_SAFE_INTEGER = 2**53 - 1
"""I-JSON (RFC 7493 §2.2): integers beyond this do not survive other parsers (or Cosmos DB)."""
MAX_ID_CHARS = 128
MAX_METADATA_STRING_CHARS = 2048
MAX_METADATA_BYTES = 16 * 1024
_MAX_TOKENS = 10_000
"""More scan tokens than a body within the key and item limits can have (about 7,700)."""


class RejectionCode(StrEnum):
    """Why a request was refused: stable codes that operators and producers can act on."""

    OVERSIZE = "oversize"
    EMPTY_BODY = "empty_body"
    INVALID_ENCODING = "invalid_encoding"
    TOO_DEEP = "too_deep"
    TOO_MANY_KEYS = "too_many_keys"
    TOO_MANY_ITEMS = "too_many_items"
    INVALID_JSON = "invalid_json"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_UNICODE = "invalid_unicode"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_ID = "invalid_id"
    INVALID_CHANNEL = "invalid_channel"
    TEXT_TOO_LONG = "text_too_long"
    EMPTY_TEXT = "empty_text"
    CONTROL_CHARS = "control_chars"
    STRING_TOO_LONG = "string_too_long"
    METADATA_TOO_LARGE = "metadata_too_large"
    UNKNOWN_CONVERSATION = "unknown_conversation"
    """A follow-up naming a conversation this customer does not have."""
    CONVERSATION_FULL = "conversation_full"
    """A follow-up of a conversation that has all the turns one may have."""
    RATE_LIMITED = "rate_limited"
    """A valid request over its customer's ingress rate (``shared.service.admission``): hub
    events are recorded with this code; over HTTP the caller gets 429 and retries."""
    INTERNAL_ERROR = "internal_error"
    """Not the request's fault: validating it raised unexpectedly. The record keeps the body's
    hash so it can be found and replayed once the bug is fixed."""


class RequestRejected(InvalidInput):
    """A request broke the contract; ``code`` says which rule, ``description`` names the field
    and the limit."""

    def __init__(self, code: RejectionCode, description: str) -> None:
        super().__init__(description)
        self.code = code


def reject(code: RejectionCode, description: str) -> NoReturn:
    """Refuse the request being read: raise :class:`RequestRejected`."""
    raise RequestRejected(code, description)
