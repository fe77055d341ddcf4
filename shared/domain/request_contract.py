"""The request contract: what every way in accepts as one customer request, and why it refuses.

Event Hub events, batch-document rows and any HTTP entry point all go through
:func:`parse_request` (or :func:`parse_request_fields` for a row already split into fields), so
one body gets one verdict wherever it arrives. The README's "Request contract" section states
the same rules for producers.

The rules, in the order they are checked (the first that fails is the reason):

1. At most ``MAX_BODY_BYTES`` (1 MiB, the Event Hubs event limit) → ``oversize``.
2. UTF-8 only (RFC 8259 §8.1). A leading UTF-8 byte-order mark is stripped; a UTF-16/UTF-32
   mark, a NUL byte, gzip data or any invalid UTF-8 sequence → ``invalid_encoding``, naming
   what was seen and where. Nothing at all, or only whitespace → ``empty_body``.
3. A linear scan, before anything recursive runs, bounds the structure: nesting depth
   (``too_deep``), object keys (``too_many_keys``) and array items (``too_many_items``) in the
   whole body. So no input can raise ``RecursionError`` or take more than linear time.
4. Strict JSON (RFC 8259): ``NaN``/``Infinity``, trailing data, comments… → ``invalid_json``;
   numbers longer than ``MAX_NUMBER_CHARS``, integers outside ±(2**53 - 1) (RFC 7493 §2.2) or
   floats beyond a double → ``number_out_of_range``; the same key twice in one object, at any
   depth → ``duplicate_key``; a lone surrogate escape → ``invalid_unicode``.
5. One JSON object (``not_an_object``) with exactly the known fields: ``customerId``, ``text``,
   ``channel`` required, ``idempotencyKey`` and ``metadata`` optional (``null`` = absent),
   snake_case spellings accepted but never both spellings at once (``duplicate_key``).
6. Field rules: ids match ``ID_PATTERN`` (``invalid_id``); ``channel`` is one of
   :class:`Channel`, exact case (``invalid_channel``); ``text`` has at most ``MAX_TEXT_CHARS``
   characters (``text_too_long``), something visible once whitespace and invisible format
   characters are removed (``empty_text``), and no control characters but tab, CR and LF
   (``control_chars``: refused, never silently stripped, so what a producer's log shows is what
   the agents read); ``metadata`` is any JSON object, never interpreted, whose strings and keys
   are at most ``MAX_METADATA_STRING_CHARS`` (``string_too_long``) and whose compact encoding is
   at most ``MAX_METADATA_BYTES`` (``metadata_too_large``).

Descriptions name the field and the limit, never the offending value.

Steps 1-4 are :mod:`shared.domain.strict_json`; the limits, codes and :class:`RequestRejected`
are :mod:`shared.domain.rejections`. Every name is importable from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.domain.messages import (
    ID_PATTERN,
    MAX_TEXT_CHARS,
    Channel,
    CustomerRequest,
    conversation_id_for,
    describe_validation_error,
    event_fallback,
    rejection_id_for,
)
from shared.domain.rejections import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_ITEMS,
    MAX_KEYS,
    MAX_METADATA_BYTES,
    MAX_METADATA_STRING_CHARS,
    MAX_NUMBER_CHARS,
    MAX_SAFE_INTEGER,
    RejectionCode,
    RequestRejected,
)
from shared.domain.rejections import reject as _reject
from shared.domain.strict_json import decode_utf8, json_type, loads_strict, quoted_name, strings
from shared.telemetry.redaction import redact

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- fields

_FIELDS = {
    "customerId": "customerId",
    "customer_id": "customerId",
    "text": "text",
    "channel": "channel",
    "idempotencyKey": "idempotencyKey",
    "idempotency_key": "idempotencyKey",
    "metadata": "metadata",
    "conversationId": "conversationId",
    "conversation_id": "conversationId",
}
_REQUIRED = ("customerId", "text", "channel")
_ID = re.compile(ID_PATTERN)
_INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc"})
_ALLOWED_CONTROLS = frozenset("\t\r\n")


def parse_request(raw: bytes | str) -> CustomerRequest:
    """Decode and validate one request body; raises :class:`RequestRejected` with its code.

    Total over its input: for any bytes it returns a request or raises ``RequestRejected``.
    """
    data = loads_strict(raw, what="the body")
    if not isinstance(data, dict):
        _reject(
            RejectionCode.NOT_AN_OBJECT,
            f"the body is a JSON {json_type(data)}; a request is one JSON object",
        )
    return parse_request_fields(data)


def parse_request_fields(data: Mapping[str, Any]) -> CustomerRequest:
    """Validate a request already decoded into fields (a CSV row, a parsed body)."""
    fields: dict[str, Any] = {}
    unknown = [key for key in data if key not in _FIELDS]
    if unknown:
        names = ", ".join(quoted_name(k) for k in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        _reject(
            RejectionCode.UNKNOWN_FIELD,
            f"unknown field {names}{more}; a request has customerId, text, channel, "
            "idempotencyKey, metadata and conversationId",
        )
    for key, value in data.items():
        name = _FIELDS[key]
        if name in fields:
            _reject(
                RejectionCode.DUPLICATE_KEY, f"{name} is given twice, as camelCase and snake_case"
            )
        fields[name] = value
    missing = [name for name in _REQUIRED if name not in fields]
    if missing:
        _reject(RejectionCode.MISSING_FIELD, f"missing required field {', '.join(missing)}")
    for name in ("customerId", "text", "channel"):
        _expect(name, fields[name], str, "a string")
    for name, kind, label in (
        ("idempotencyKey", str, "a string"),
        ("metadata", dict, "an object"),
        ("conversationId", str, "a string"),
    ):
        if fields.get(name) is None:
            fields.pop(name, None)
        else:
            _expect(name, fields[name], kind, label)
    for name in ("customerId", "idempotencyKey", "conversationId"):
        if name in fields:
            _check_id(name, fields[name])
    if fields["channel"] not in {c.value for c in Channel}:
        _reject(
            RejectionCode.INVALID_CHANNEL,
            f"channel must be one of {', '.join(c.value for c in Channel)} (exact case); "
            f"got a {len(fields['channel'])}-character string that is none of them",
        )
    _check_text(fields["text"])
    if "metadata" in fields:
        _check_metadata(fields["metadata"])
    try:
        return CustomerRequest.model_validate(fields)
    except ValidationError as exc:  # a second net: the rules above should already hold
        _reject(RejectionCode.WRONG_TYPE, f"request is invalid: {describe_validation_error(exc)}")


def _expect(name: str, value: Any, kind: type, label: str) -> None:
    if not isinstance(value, kind):
        _reject(RejectionCode.WRONG_TYPE, f"{name} must be {label}, got {json_type(value)}")


def _check_id(name: str, value: str) -> None:
    if not _ID.fullmatch(value):
        _reject(
            RejectionCode.INVALID_ID,
            f"{name} must be 1-{MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : @ -, starting "
            f"with a letter or digit; got {len(value)} characters that are not",
        )


def _check_text(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        _reject(
            RejectionCode.TEXT_TOO_LONG,
            f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}",
        )
    if not any(not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE for ch in text):
        _reject(
            RejectionCode.EMPTY_TEXT,
            "text is empty once whitespace and invisible characters are removed",
        )
    for position, ch in enumerate(text):
        if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc":
            _reject(
                RejectionCode.CONTROL_CHARS,
                f"text has control character U+{ord(ch):04X} at character {position}; "
                "only tab, CR and LF are allowed",
            )


def _check_metadata(metadata: dict[str, Any]) -> None:
    for path, text in strings(metadata, "metadata"):
        if len(text) > MAX_METADATA_STRING_CHARS:
            _reject(
                RejectionCode.STRING_TOO_LONG,
                f"{path} holds a string of {len(text)} characters; the limit in metadata is "
                f"{MAX_METADATA_STRING_CHARS}",
            )
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        _reject(
            RejectionCode.METADATA_TOO_LARGE,
            f"metadata is {size} bytes as compact JSON; the limit is {MAX_METADATA_BYTES}",
        )


# ----------------------------------------------------------------------------- verdicts


def judge(raw: bytes) -> CustomerRequest | RequestRejected:
    """The verdict on one body, never raising: a request, or why it is refused.

    A validation bug is not the producer's fault, but it must not stall the partition either:
    it becomes an ``internal_error`` rejection whose record keeps the body's hash.
    """
    try:
        return parse_request(raw)
    except RequestRejected as exc:
        return exc
    except Exception as exc:
        log.exception("validating a request raised %s", exc.__class__.__name__)
        return RequestRejected(
            RejectionCode.INTERNAL_ERROR,
            f"validating the request raised {exc.__class__.__name__}; the body is kept by hash",
        )


def customer_hint(raw: bytes | str) -> str | None:
    """The customer id of a refused body when it can be read safely, for its record."""
    try:
        data = loads_strict(raw, what="the body")
    except RequestRejected:
        return None
    if isinstance(data, dict):
        value = data.get("customerId", data.get("customer_id"))
        if isinstance(value, str) and _ID.fullmatch(value):
            return value
    return None


EXCERPT_CHARS = 80


def body_excerpt(raw: bytes, *, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of a body, printable and redacted, for a rejection record.

    Undecodable bytes show as ``\\xNN`` and control characters as escapes, so a record can be
    printed in any terminal or page; personal data and secrets are masked by ``redact``.
    """
    head = raw[: limit * 4]
    text = head.decode("utf-8", "backslashreplace")
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    cut = shown[:limit]
    return redact(cut) + ("…" if len(shown) > limit or len(raw) > len(head) else "")


def body_digest(raw: bytes) -> str:
    """The body's SHA-256, so a refused event can be matched with what the producer sent."""
    return hashlib.sha256(raw).hexdigest()


def event_document_id(body: bytes, identity: str) -> str:
    """The id of the document a hub event becomes: its conversation, or its rejection record.

    Lets a producer that knows where its events landed follow them to their outcome.
    """
    verdict = judge(body)
    if isinstance(verdict, RequestRejected):
        return rejection_id_for(identity)
    return conversation_id_for(
        verdict.customer_id, verdict.idempotency_key, fallback=event_fallback(identity)
    )


__all__ = [
    "EXCERPT_CHARS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "MAX_ITEMS",
    "MAX_KEYS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_STRING_CHARS",
    "MAX_NUMBER_CHARS",
    "MAX_SAFE_INTEGER",
    "RejectionCode",
    "RequestRejected",
    "body_digest",
    "body_excerpt",
    "customer_hint",
    "decode_utf8",
    "event_document_id",
    "judge",
    "loads_strict",
    "parse_request",
    "parse_request_fields",
]
