"""Batch documents as producers really write them."""

from __future__ import annotations

import json

from shared.batch_documents import parse_document


def test_a_json_line_may_hold_unicode_line_separators_in_its_strings() -> None:
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 unescaped; they end no line.
    texts = ["para one\u2028para two", "a\u2029b", "c\x85d", "e\x0cf"]
    data = "\n".join(
        json.dumps({"customerId": f"c{n}", "text": t}, ensure_ascii=False)
        for n, t in enumerate(texts)
    ).encode()
    fmt, items = parse_document("batches/day.jsonl", data)
    assert fmt == "jsonl"
    assert [i.line for i in items] == [1, 2, 3, 4]
    assert [i.request.text if i.request else i.reason for i in items] == texts


def test_a_byte_order_mark_does_not_hide_the_format_of_a_name_without_extension() -> None:
    data = '\ufeff{"customerId": "c1", "text": "Where is ORD-1?"}\r\n'.encode()
    fmt, items = parse_document("batches/upload", data)
    assert fmt == "jsonl"
    assert items[0].request is not None
    assert items[0].request.customer_id == "c1"
