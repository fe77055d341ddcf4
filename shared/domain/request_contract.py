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
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, NoReturn

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
from shared.errors import InvalidInput
from shared.telemetry.redaction import redact

log = logging.getLogger(__name__)

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


def _reject(code: RejectionCode, description: str) -> NoReturn:
    raise RequestRejected(code, description)


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
            f"the body is a JSON {_json_type(data)}; a request is one JSON object",
        )
    return parse_request_fields(data)


def parse_request_fields(data: Mapping[str, Any]) -> CustomerRequest:
    """Validate a request already decoded into fields (a CSV row, a parsed body)."""
    fields: dict[str, Any] = {}
    unknown = [key for key in data if key not in _FIELDS]
    if unknown:
        names = ", ".join(_quote_name(k) for k in unknown[:3])
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
        _reject(RejectionCode.WRONG_TYPE, f"{name} must be {label}, got {_json_type(value)}")


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
    for path, text in _strings(metadata, "metadata"):
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


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every key and string value under ``value`` with its path; iterative, depth is bounded
    already but a loop costs nothing."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, child in node.items():
                yield f"a key in {where}", key
                stack.append((f"{where}.{_short(key)}", child))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(node))


# ----------------------------------------------------------------------------- bytes and JSON

_BOMS = (
    (b"\x00\x00\xfe\xff", "a UTF-32 BE byte-order mark"),
    (b"\xff\xfe\x00\x00", "a UTF-32 LE byte-order mark"),
    (b"\xfe\xff", "a UTF-16 BE byte-order mark"),
    (b"\xff\xfe", "a UTF-16 LE byte-order mark"),
)
_UTF8_BOM = b"\xef\xbb\xbf"
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]|"|[^\s{}\[\]:,"]+')
_SURROGATE = re.compile("[\ud800-\udfff]")
_PROBLEM_ORDER = (
    RejectionCode.INVALID_JSON,
    RejectionCode.NUMBER_OUT_OF_RANGE,
    RejectionCode.DUPLICATE_KEY,
    RejectionCode.INVALID_UNICODE,
)


def loads_strict(raw: bytes | str, *, what: str) -> Any:
    """Decode ``raw`` as strict, bounded JSON (rules 1-4 above); ``what`` names it in errors."""
    text = decode_utf8(raw, what=what) if isinstance(raw, bytes) else raw.removeprefix("\ufeff")
    if len(text) > MAX_BODY_BYTES:  # a str that came in decoded: bound it all the same
        _reject(RejectionCode.OVERSIZE, f"{what} is over {MAX_BODY_BYTES} bytes")
    if not text.strip(" \t\r\n"):
        _reject(RejectionCode.EMPTY_BODY, f"{what} is empty")
    _scan_structure(text, what=what)
    problems = _Problems()
    try:
        value = json.loads(
            text,
            object_pairs_hook=problems.object,
            parse_constant=problems.constant,
            parse_int=problems.integer,
            parse_float=problems.floating,
        )
    except json.JSONDecodeError as exc:
        _reject(
            RejectionCode.INVALID_JSON,
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            f"{_framing_hint(text)}",
        )
    except RecursionError:  # the scan bounds depth; this is the second net
        _reject(RejectionCode.TOO_DEEP, f"{what} nests too deeply; the limit is {MAX_DEPTH}")
    problems.check_strings(value)
    problems.raise_first()
    return value


def decode_utf8(raw: bytes, *, what: str) -> str:
    """``raw`` as text, or ``invalid_encoding`` naming what was seen (a BOM, a byte, gzip)."""
    if len(raw) > MAX_BODY_BYTES:
        _reject(
            RejectionCode.OVERSIZE, f"{what} is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}"
        )
    if not raw.strip(b" \t\r\n"):
        _reject(RejectionCode.EMPTY_BODY, f"{what} is empty")
    for mark, name in _BOMS:
        if raw.startswith(mark):
            _reject(RejectionCode.INVALID_ENCODING, f"{what} starts with {name}; send UTF-8")
    if raw.startswith(b"\x1f\x8b"):
        _reject(RejectionCode.INVALID_ENCODING, f"{what} is gzip-compressed; send plain UTF-8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        _reject(
            RejectionCode.INVALID_ENCODING,
            f"{what} has a NUL byte at offset {nul} (UTF-16 or UTF-32 text?); send UTF-8",
        )
    body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(raw) - len(body))
        _reject(
            RejectionCode.INVALID_ENCODING,
            f"{what} is not UTF-8: invalid byte 0x{raw[offset]:02X} at offset {offset}",
        )


def _scan_structure(text: str, *, what: str) -> None:
    """Bound depth, keys and items in one linear pass over the tokens, before parsing.

    The scan trusts nothing: on anything it cannot follow (an unterminated string, more tokens
    than a body within the limits can have) it stops and leaves the verdict to the parser,
    which by then cannot recurse deeper than the depth seen so far.
    """
    stack: list[str] = []
    keys = items = 0
    first_item = False
    for tokens, match in enumerate(_TOKEN.finditer(text), start=1):
        token = match.group()
        if tokens > _MAX_TOKENS or token == '"':
            _reject(RejectionCode.INVALID_JSON, f"{what} is not valid JSON{_framing_hint(text)}")
        if first_item and token != "]":
            items += 1
        first_item = False
        if token in "{[":
            stack.append(token)
            if len(stack) > MAX_DEPTH:
                _reject(
                    RejectionCode.TOO_DEEP,
                    f"{what} nests deeper than {MAX_DEPTH} levels (metadata: "
                    f"{MAX_DEPTH - 2} levels)",
                )
            first_item = token == "["
        elif token in "}]":
            if stack:
                stack.pop()
        elif token == ":":
            keys += 1
        elif token == "," and stack and stack[-1] == "[":
            items += 1
        if keys > MAX_KEYS:
            _reject(RejectionCode.TOO_MANY_KEYS, f"{what} has over {MAX_KEYS} object keys")
        if items > MAX_ITEMS:
            _reject(RejectionCode.TOO_MANY_ITEMS, f"{what} has over {MAX_ITEMS} array items")


class _Problems:
    """Collects what the parser's hooks find, so a syntax error later in the body still wins
    over a duplicate key earlier in it (the order of the rules, not the order of the bytes)."""

    def __init__(self) -> None:
        self.found: dict[RejectionCode, str] = {}

    def note(self, code: RejectionCode, description: str) -> None:
        self.found.setdefault(code, description)

    def raise_first(self) -> None:
        for code in _PROBLEM_ORDER:
            if code in self.found:
                _reject(code, self.found[code])

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.note(
                        RejectionCode.DUPLICATE_KEY,
                        f"key {_quote_name(key)} appears twice in one object",
                    )
                    break
                seen.add(key)
        return result

    def constant(self, name: str) -> float:
        self.note(RejectionCode.INVALID_JSON, f"{name} is not a JSON number (RFC 8259 §6)")
        return 0.0

    def integer(self, literal: str) -> int:
        if len(literal) > MAX_NUMBER_CHARS:
            self._out_of_range(f"a {len(literal)}-character number")
            return 0
        value = int(literal)
        if abs(value) > MAX_SAFE_INTEGER:
            self._out_of_range(f"an integer beyond ±{MAX_SAFE_INTEGER}")
        return value

    def floating(self, literal: str) -> float:
        if len(literal) > MAX_NUMBER_CHARS:
            self._out_of_range(f"a {len(literal)}-character number")
            return 0.0
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            self._out_of_range("a number beyond the range of a double")
        return value

    def _out_of_range(self, what: str) -> None:
        self.note(
            RejectionCode.NUMBER_OUT_OF_RANGE,
            f"the body holds {what}; numbers must be doubles, integers within ±"
            f"{MAX_SAFE_INTEGER} (RFC 7493 §2.2), at most {MAX_NUMBER_CHARS} characters",
        )

    def check_strings(self, value: Any) -> None:
        for path, text in _strings(value, "body"):
            if _SURROGATE.search(text):
                self.note(
                    RejectionCode.INVALID_UNICODE,
                    f"{path} holds a lone surrogate escape (\\uD800-\\uDFFF without its pair)",
                )
                return


def _framing_hint(text: str) -> str:
    """A hint for the framing mistakes producers make most often."""
    head = text.lstrip()[:64]
    if head.startswith("data:"):
        return " (it looks like a server-sent event: send the JSON without 'data:')"
    if head.startswith("<"):
        return " (it looks like XML or HTML)"
    if "=" in head and "&" in head and not head.startswith(("{", "[")):
        return " (it looks form-encoded)"
    try:
        json.JSONDecoder().raw_decode(text.lstrip())
    except (json.JSONDecodeError, RecursionError):
        return ""
    return " (there is more after the first JSON value: one event holds one request)"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short(name: str) -> str:
    return name if len(name) <= 40 and name.isprintable() else f"<{len(name)}-character key>"


def _quote_name(name: str) -> str:
    return repr(_short(name)) if _short(name) == name else _short(name)


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
