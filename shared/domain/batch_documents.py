"""Parsing batch documents (JSON Lines and CSV) into requests, one reason per bad line."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import PurePosixPath
from typing import Any

from shared.domain.messages import CustomerRequest
from shared.domain.request_contract import (
    RejectionCode,
    RequestRejected,
    loads_strict,
    parse_request,
    parse_request_fields,
)
from shared.errors import InvalidInput

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_ITEMS = 10_000
"""Items per document: as many as the batch view counts in one store query (its limit)."""


class DocumentProblem(StrEnum):
    """Why a whole document was refused (a row's reasons are the request contract's codes)."""

    TOO_LARGE = "document_too_large"
    INVALID_ENCODING = "invalid_encoding"
    NOT_TEXT = "not_text"
    EMPTY = "empty_document"
    UNKNOWN_FORMAT = "unknown_format"
    BAD_HEADER = "bad_header"
    MALFORMED_CSV = "malformed_csv"
    TOO_MANY_ITEMS = "too_many_items"


class DocumentRejected(InvalidInput):
    """The document as a whole cannot be read; ``code`` is a :class:`DocumentProblem`."""

    def __init__(self, code: DocumentProblem, description: str) -> None:
        super().__init__(description)
        self.code = code


_CSV_ALIASES = {
    "customer_id": "customerId",
    "customerid": "customerId",
    "customer": "customerId",
    "text": "text",
    "message": "text",
    "channel": "channel",
    "idempotency_key": "idempotencyKey",
    "idempotencykey": "idempotencyKey",
    "metadata": "metadata",
}


@dataclass(frozen=True)
class ParsedItem:
    """One row: ``line`` is its physical line (JSON Lines) or the line its CSV record starts on."""

    line: int
    request: CustomerRequest | None
    reason: str = ""
    code: str = ""
    raw: str = ""
    """The row as read: the JSON line, or the CSV record's cells joined by commas."""


def detect_format(name: str, text: str) -> str:
    """``jsonl`` or ``csv`` from the blob name, else from the first non-blank character."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".jsonlines"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    head = text.lstrip()[:1]
    if head == "{":
        return "jsonl"
    if head and head != "[" and "," in text[:4096]:
        return "csv"
    raise DocumentRejected(
        DocumentProblem.UNKNOWN_FORMAT,
        f"cannot tell the format of {PurePosixPath(name).name!r}: "
        "use .jsonl (one JSON object per line) or .csv with a header row",
    )


def parse_document(name: str, data: bytes) -> tuple[str, list[ParsedItem]]:
    """Every item of a batch document, valid or with its reason code.

    Rows follow the request contract (``shared.domain.request_contract``) one by one. Raises
    ``DocumentRejected`` when the document as a whole is unusable (too large, not UTF-8 text,
    unknown format, no usable header, no items, too many items).
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentRejected(
            DocumentProblem.TOO_LARGE,
            f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}",
        )
    text = _document_text(data)
    fmt = detect_format(name, text)  # decoded: a byte-order mark is not the first character
    items = list(_jsonl(text) if fmt == "jsonl" else _csv(text))
    if not items:
        raise DocumentRejected(DocumentProblem.EMPTY, "document has no requests")
    if len(items) > MAX_ITEMS:
        raise DocumentRejected(
            DocumentProblem.TOO_MANY_ITEMS,
            f"document has {len(items)} items; the limit is {MAX_ITEMS}",
        )
    return fmt, items


def _document_text(data: bytes) -> str:
    """The document as UTF-8 text (a leading byte-order mark stripped), as the contract says."""
    if not data.strip():
        raise DocumentRejected(DocumentProblem.EMPTY, "document is empty")
    return _decode_whole(data)


def _decode_whole(data: bytes) -> str:
    for mark, name in (
        (b"\x00\x00\xfe\xff", "UTF-32 BE"),
        (b"\xff\xfe\x00\x00", "UTF-32 LE"),
        (b"\xfe\xff", "UTF-16 BE"),
        (b"\xff\xfe", "UTF-16 LE"),
    ):
        if data.startswith(mark):
            raise DocumentRejected(
                DocumentProblem.INVALID_ENCODING,
                f"document starts with a {name} byte-order mark; batch documents are UTF-8",
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DocumentRejected(
            DocumentProblem.NOT_TEXT,
            f"document has a NUL byte at offset {nul}: it is not UTF-8 text",
        )
    body = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(data) - len(body)
        raise DocumentRejected(
            DocumentProblem.INVALID_ENCODING,
            f"document is not UTF-8: invalid byte 0x{data[offset]:02X} at offset {offset}",
        ) from None


def _jsonl(text: str) -> Iterator[ParsedItem]:
    # Only "\n" ends a line: JSON strings may hold U+2028 and other characters that
    # str.splitlines() would also split on. A trailing "\r" is whitespace to JSON.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield _item(number, line, partial(parse_request, line))


def _item(number: int, raw: str, parse: Callable[[], CustomerRequest]) -> ParsedItem:
    try:
        return ParsedItem(line=number, request=parse())
    except RequestRejected as exc:
        return ParsedItem(number, None, exc.description, exc.code, raw)


def _csv(text: str) -> Iterator[ParsedItem]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DocumentRejected(
            DocumentProblem.BAD_HEADER, f"CSV header is malformed: {exc}"
        ) from None
    columns = [_CSV_ALIASES.get(h.strip().lower().replace(" ", "_")) for h in header]
    missing = {"customerId", "text", "channel"} - {c for c in columns if c}
    if missing:
        raise DocumentRejected(
            DocumentProblem.BAD_HEADER,
            f"CSV header lacks {', '.join(sorted(missing))}; "
            "expected columns customer_id, text, channel[, idempotency_key, metadata]",
        )
    start = reader.line_num + 1
    try:
        for row in reader:
            number, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                yield ParsedItem(
                    number,
                    None,
                    f"row has {len(row)} fields; the header has {len(columns)}",
                    RejectionCode.WRONG_TYPE,
                    ",".join(row),
                )
                continue
            yield _item(number, ",".join(row), partial(_csv_request, columns, row))
    except csv.Error as exc:
        raise DocumentRejected(
            DocumentProblem.MALFORMED_CSV, f"CSV is malformed at line {reader.line_num}: {exc}"
        ) from None


def _csv_request(columns: list[str | None], row: list[str]) -> CustomerRequest:
    """A CSV row through the request contract; the metadata cell is strict JSON like a body's.

    An empty cell is an absent field; columns the contract does not know are ignored.
    """
    data: dict[str, Any] = {}
    for column, cell in zip(columns, row, strict=True):
        if column is None or cell == "":
            continue
        data[column] = (
            loads_strict(cell, what="the metadata cell") if column == "metadata" else cell
        )
    return parse_request_fields(data)
