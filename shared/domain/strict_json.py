"""Bytes and JSON under the request contract: UTF-8 only, bounded structure, strict RFC 8259.

Steps 1-4 of the rules in :mod:`shared.domain.request_contract`: the body is decoded and its
structure bounded by a linear scan before anything recursive runs, then parsed with every
problem (number range, duplicate keys, lone surrogates) reported by its rejection code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from shared.domain.rejections import (
    _MAX_TOKENS,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_KEYS,
    MAX_NUMBER_CHARS,
    MAX_SAFE_INTEGER,
    RejectionCode,
)
from shared.domain.rejections import reject as _reject

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
                        f"key {quoted_name(key)} appears twice in one object",
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
        for path, text in strings(value, "body"):
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


def json_type(value: Any) -> str:
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


def short_name(name: str) -> str:
    return name if len(name) <= 40 and name.isprintable() else f"<{len(name)}-character key>"


def quoted_name(name: str) -> str:
    return repr(short_name(name)) if short_name(name) == name else short_name(name)


def strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
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
                stack.append((f"{where}.{short_name(key)}", child))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(node))
