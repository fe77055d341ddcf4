"""Chat request validation: bad bodies get a 400-style error that names the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from devhost.simulator.protocol import RequestError, parse_chat_body

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
        ({"messages": USER, "max_tokens": "100"}, "max_tokens"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": True}, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": USER, "max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "stream": True}, "stream"),
        ({"messages": USER, "response_format": "json"}, "response_format"),
        ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": USER, "response_format": {"type": "json_object"}}, "messages"),
        (
            {"messages": USER, "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
        ),
        (
            {
                "messages": USER,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a b"}},
            },
            "response_format.json_schema.name",
        ),
        (
            {
                "messages": USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": [1]},
                },
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_an_invalid_body_names_the_offending_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_body(body)
    assert caught.value.param == param
    error = caught.value.body()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def json_schema_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    }


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "#/$defs/Missing"}, "does not resolve"),
        ({"type": "object", "properties": {"a": {"type": "text"}}}, "properties.a"),
        ({"properties": {"a": {"enum": []}}}, "'enum' must be a non-empty array"),
        ({"required": "a"}, "'required'"),
        ({"anyOf": {"type": "string"}}, "'anyOf' must be an array"),
    ],
)
def test_a_broken_schema_is_refused_before_any_work(schema: dict[str, Any], problem: str) -> None:
    with pytest.raises(RequestError, match="Invalid schema for response_format 'r'") as caught:
        parse_chat_body(json_schema_body(schema))
    assert problem in caught.value.message
    assert caught.value.param == "response_format"


def test_properties_named_like_keywords_are_not_mistaken_for_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {"type": {"type": "string"}, "enum": {"type": "integer"}},
        "required": ["type", "enum"],
    }
    assert parse_chat_body(json_schema_body(schema)).response_format.schema == schema


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(RequestError, match="JSON object"):
        parse_chat_body([1, 2])


def test_a_valid_body_is_parsed_with_its_limits() -> None:
    call = parse_chat_body(
        {
            "messages": [
                {"role": "system", "content": "Answer in json."},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "max_completion_tokens": 64,
            "n": 2,
            "response_format": {"type": "json_object"},
        }
    )
    assert call.max_tokens == 64
    assert call.n == 2
    assert call.response_format.kind == "json_object"


def test_the_digest_ignores_key_order_but_not_content() -> None:
    a = parse_chat_body({"messages": USER, "max_tokens": 5})
    b = parse_chat_body({"max_tokens": 5, "messages": USER})
    c = parse_chat_body({"max_tokens": 6, "messages": USER})
    assert a.digest == b.digest
    assert a.digest != c.digest
