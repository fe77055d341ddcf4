"""The request schema and the envelope: validation, clear reasons, deterministic ids."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.messages import (
    Envelope,
    Stage,
    conversation_id_for,
    message_id_for,
    utcnow,
)
from shared.domain.request_contract import RequestRejected, parse_request, parse_request_fields
from shared.errors import InvalidInput


def test_camel_and_snake_case_requests_both_parse() -> None:
    a = parse_request(
        b'{"customerId": "c1", "text": "hi", "channel": "chat", "idempotencyKey": "k1"}'
    )
    b = parse_request_fields(
        {"customer_id": "c1", "text": "hi", "channel": "chat", "idempotency_key": "k1"}
    )
    assert a == b


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (b"[1,2]", "not_an_object", "JSON array"),
        (b'{"customerId": "c1", "text": "   ", "channel": "chat"}', "empty_text", "empty"),
        (b'{"customerId": "c1", "text": "hi", "channel": "pigeon"}', "invalid_channel", "channel"),
        (
            b'{"customerId": "c1", "text": "hi", "channel": "chat", "surprise": 1}',
            "unknown_field",
            "surprise",
        ),
        (b'{"customerId": "../etc", "text": "hi", "channel": "chat"}', "invalid_id", "customerId"),
        (b'{"customerId": "c1", "text": "hi"}', "missing_field", "channel"),
    ],
)
def test_bad_requests_say_what_is_wrong(raw: bytes, code: str, reason: str) -> None:
    with pytest.raises(RequestRejected, match=reason) as caught:
        parse_request(raw)
    assert caught.value.code == code


def test_an_idempotency_key_makes_the_conversation_id() -> None:
    a = conversation_id_for("c1", "k", fallback="p0:1")
    assert a == conversation_id_for("c1", "k", fallback="p3:99")
    assert a != conversation_id_for("c2", "k", fallback="p0:1")


def test_without_a_key_the_delivery_identity_makes_the_conversation_id() -> None:
    redelivered = conversation_id_for("c1", None, fallback="p0:1")
    assert redelivered == conversation_id_for("c1", None, fallback="p0:1")
    assert redelivered != conversation_id_for("c1", None, fallback="p0:2")
    assert redelivered != conversation_id_for("c1", None, fallback="p1:1")
    assert redelivered != conversation_id_for("c1", "p0:1", fallback="p0:1")


def test_message_ids_are_deterministic_per_stage_revision_and_attempt() -> None:
    ids = {message_id_for("c-1", s, r, a) for s in Stage for r in range(3) for a in range(2)}
    assert len(ids) == 4 * 3 * 2
    assert message_id_for("c-1", Stage.CRITIC, 1) == "c-1:critic:1"


ENVELOPE_REFUSALS = re.compile(
    r"message body is not valid JSON: |message body must be a JSON object$"
    r"|unsupported envelope version |envelope is invalid: "
)


@given(st.binary(max_size=200))
def test_any_bytes_either_decode_to_an_envelope_or_raise_invalid_input(body: bytes) -> None:
    try:
        env = Envelope.from_bytes(body)
    except InvalidInput as exc:
        reason = exc.description
    else:
        assert Envelope.from_bytes(env.to_bytes()) == env
        return
    assert ENVELOPE_REFUSALS.match(reason), reason


def test_an_envelope_round_trips() -> None:
    env = Envelope(
        message_id="c-1:intent:0",
        conversation_id="c-1",
        customer_id="cust",
        stage=Stage.INTENT,
        created_at=utcnow(),
        sent_at=utcnow(),
        payload={"reason": "x"},
    )
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert json.loads(env.to_bytes())["conversationId"] == "c-1"
