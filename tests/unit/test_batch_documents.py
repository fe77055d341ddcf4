"""Batch documents as producers really write them."""

from __future__ import annotations

import json

import pytest

from shared.domain.batch_documents import DocumentRejected, parse_document


def test_a_json_line_may_hold_unicode_line_separators_in_its_strings() -> None:
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 unescaped; they end no line.
    texts = ["para one\u2028para two", "a\u2029b", "c\x85d", "e\x0cf"]
    data = "\n".join(
        json.dumps({"customerId": f"c{n}", "text": t, "channel": "chat"}, ensure_ascii=False)
        for n, t in enumerate(texts)
    ).encode()
    fmt, items = parse_document("batches/day.jsonl", data)
    assert fmt == "jsonl"
    assert [i.line for i in items] == [1, 2, 3, 4]
    assert [i.request.text if i.request else i.code for i in items] == [
        *texts[:2],
        # U+0085 (NEL) and U+000C (form feed) are control characters: refused, not stripped.
        "control_chars",
        "control_chars",
    ]


def test_a_byte_order_mark_does_not_hide_the_format_of_a_name_without_extension() -> None:
    data = '\ufeff{"customerId": "c1", "text": "Where is ORD-1?", "channel": "web"}\r\n'.encode()
    fmt, items = parse_document("batches/upload", data)
    assert fmt == "jsonl"
    assert items[0].request is not None
    assert items[0].request.customer_id == "c1"


def test_a_csv_row_names_the_line_its_record_starts_on() -> None:
    data = b'customer_id,text,channel\nc1,"two\nlines",chat\nc2,hello,pigeon\nc3,"{x}",email\n'
    _, items = parse_document("batches/rows.csv", data)
    assert [(i.line, i.code or "ok") for i in items] == [
        (2, "ok"),
        (4, "invalid_channel"),
        (5, "ok"),
    ]


def test_a_metadata_cell_is_held_to_the_same_strict_json_as_a_body() -> None:
    data = (
        b"customer_id,text,channel,metadata\n"
        b'c1,hi,chat,"{""device"": {""os"": ""iOS""}, ""tags"": [""a""]}"\n'
        b'c2,hi,chat,"{""a"": 1, ""a"": 2}"\n'
        b'c3,hi,chat,"{""n"": NaN}"\n'
    )
    _, items = parse_document("batches/meta.csv", data)
    assert items[0].request is not None
    assert items[0].request.metadata == {"device": {"os": "iOS"}, "tags": ["a"]}
    assert [i.code for i in items[1:]] == ["duplicate_key", "invalid_json"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("customer_id,text,channel\nc1,hi,chat\n".encode("utf-16"), "invalid_encoding"),
        (b"\xef\xbb\xbfcustomer_id,text,channel\nc1,caf\xe9,chat\n", "invalid_encoding"),
        (b"customer_id,text\nc1,hi\n", "bad_header"),
        (b"   \n\n", "empty_document"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "not_text"),
    ],
)
def test_a_whole_file_problem_is_one_reason_for_the_document(data: bytes, code: str) -> None:
    with pytest.raises(DocumentRejected) as caught:
        parse_document("batches/file.csv", data)
    assert caught.value.code == code
