"""Parsing batch documents (JSON Lines and CSV) into requests, one reason per bad line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from shared.errors import InvalidInput
from shared.messages import CustomerRequest, parse_request

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_ITEMS = 10_000
"""Items per document: as many as the batch view counts in one store query (its limit)."""

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
    line: int
    request: CustomerRequest | None
    reason: str = ""


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
    raise InvalidInput(
        f"cannot tell the format of {PurePosixPath(name).name!r}: "
        "use .jsonl (one JSON object per line) or .csv with a header row"
    )


def parse_document(name: str, data: bytes) -> tuple[str, list[ParsedItem]]:
    """Every item of a batch document, valid or with its reason.

    Raises ``InvalidInput`` when the document as a whole is corrupt (too large, not UTF-8,
    unknown format, no usable header, no items).
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"document is not UTF-8 text (bad byte at offset {exc.start})") from None
    if "\x00" in text:
        raise InvalidInput("document contains NUL bytes; it is not a text document")
    fmt = detect_format(name, text)  # decoded: a byte-order mark is not the first character
    items = list(_jsonl(text) if fmt == "jsonl" else _csv(text))
    if not items:
        raise InvalidInput("document has no requests")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"document has {len(items)} items; the limit is {MAX_ITEMS}")
    return fmt, items


def _jsonl(text: str) -> Iterator[ParsedItem]:
    # Only "\n" ends a line: JSON strings may hold U+2028 and other characters that
    # str.splitlines() would also split on. A trailing "\r" is whitespace to json.loads.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield _item(number, line)


def _item(number: int, raw: str | dict[str, Any]) -> ParsedItem:
    try:
        return ParsedItem(line=number, request=parse_request(raw))
    except InvalidInput as exc:
        return ParsedItem(line=number, request=None, reason=exc.description)


def _csv(text: str) -> Iterator[ParsedItem]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InvalidInput(f"CSV header is malformed: {exc}") from None
    columns = [_CSV_ALIASES.get(h.strip().lower().replace(" ", "_")) for h in header]
    missing = {"customerId", "text"} - {c for c in columns if c}
    if missing:
        raise InvalidInput(
            f"CSV header lacks {', '.join(sorted(missing))}; "
            "expected columns customer_id, text[, channel, idempotency_key, metadata]"
        )
    try:
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                yield ParsedItem(
                    number, None, f"row has {len(row)} fields; the header has {len(columns)}"
                )
                continue
            yield _csv_row(number, columns, row)
    except csv.Error as exc:
        raise InvalidInput(f"CSV is malformed at line {reader.line_num}: {exc}") from None


def _csv_row(number: int, columns: list[str | None], row: list[str]) -> ParsedItem:
    data: dict[str, Any] = {}
    for column, cell in zip(columns, row, strict=True):
        if column is None or cell == "":
            continue
        if column == "metadata":
            try:
                data[column] = json.loads(cell)
            except json.JSONDecodeError:
                return ParsedItem(number, None, "metadata column is not a JSON object")
        else:
            data[column] = cell
    return _item(number, data)
