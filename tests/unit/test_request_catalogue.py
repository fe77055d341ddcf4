"""The catalogue of request bodies: every body in ``tests/data/requests`` gets its verdict.

``bad.jsonl`` pairs each body with the one rejection code the request contract gives it;
``valid.jsonl`` holds bodies the contract accepts. The files' format is described in
``tests/data/requests/README.md``.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.messages import CustomerRequest
from shared.domain.request_contract import RejectionCode, RequestRejected, parse_request

DATA = Path(__file__).resolve().parent.parent / "data" / "requests"

CONTRACT_CODES = (
    "oversize",
    "empty_body",
    "invalid_encoding",
    "too_deep",
    "too_many_keys",
    "too_many_items",
    "invalid_json",
    "number_out_of_range",
    "duplicate_key",
    "invalid_unicode",
    "not_an_object",
    "unknown_field",
    "missing_field",
    "wrong_type",
    "invalid_channel",
    "invalid_id",
    "empty_text",
    "control_chars",
    "text_too_long",
    "string_too_long",
    "metadata_too_large",
)
"""Every code a request body can earn, in the order the contract checks its rules."""

SYNTAX_CHECKED_AFTER = frozenset(CONTRACT_CODES[CONTRACT_CODES.index("invalid_json") + 1 :])
"""Codes of rules checked after the syntax: their bodies are well-formed JSON."""

MAX_DESCRIPTION_CHARS = 300
NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    code: str | None
    """The expected rejection code; ``None`` for a valid body."""


def build(spec: dict[str, Any]) -> bytes:
    """The body a ``generate`` entry describes: its parts, concatenated in order."""
    out = bytearray()
    for part in spec["parts"]:
        if isinstance(part, str):
            out += part.encode("utf-8")
        elif "repeat" in part:
            unit, times, sep = part["repeat"], part["times"], part.get("sep", "")
            units = (unit.replace("{i}", str(i)) for i in range(times))
            out += sep.join(units).encode("utf-8")
        elif "repeat_hex" in part:
            out += bytes.fromhex(part["repeat_hex"]) * part["times"]
        elif "pad_to" in part:
            assert part["pad_to"] >= len(out), part
            out += b" " * (part["pad_to"] - len(out))
        else:
            raise ValueError(f"unknown part {part!r}")
    return bytes(out)


def load(file_name: str) -> list[Case]:
    cases = []
    for number, line in enumerate((DATA / file_name).read_text("utf-8").splitlines(), 1):
        entry = json.loads(line)
        sources = [key for key in ("body", "body_b64", "generate") if key in entry]
        assert len(sources) == 1, f"{file_name}:{number} needs one of body, body_b64, generate"
        assert set(entry) <= {"name", "code", "body", "body_b64", "generate"}, entry.keys()
        if "body" in entry:
            body = entry["body"].encode("utf-8")
        elif "body_b64" in entry:
            body = base64.b64decode(entry["body_b64"], validate=True)
        else:
            body = build(entry["generate"])
        cases.append(Case(entry["name"], body, entry.get("code")))
    return cases


BAD = load("bad.jsonl")
VALID = load("valid.jsonl")


KNOWN_DIVERGENCES: dict[str, str] = {}
"""Cases where the module's verdict is not yet the contract's: expected to fail until fixed."""


def params(cases: list[Case], *, divergent: bool = False) -> list[Any]:
    marks = {
        name: pytest.mark.xfail(strict=True, reason=reason)
        for name, reason in (KNOWN_DIVERGENCES.items() if divergent else ())
    }
    return [pytest.param(case, id=case.name, marks=marks.get(case.name, ())) for case in cases]


def as_text(body: bytes) -> str:
    """The body as the contract reads it: UTF-8, one leading byte-order mark dropped."""
    return body.decode("utf-8").removeprefix("\ufeff")


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def verdict(body: bytes) -> CustomerRequest | RequestRejected:
    try:
        return parse_request(body)
    except RequestRejected as exc:
        return exc


# ----------------------------------------------------------------------------- the catalogue


def test_the_catalogue_holds_at_least_120_bad_and_60_valid_bodies() -> None:
    assert len(BAD) >= 120
    assert len(VALID) >= 60


def test_every_rejection_code_of_the_contract_appears_at_least_twice() -> None:
    counts = Counter(case.code for case in BAD)
    assert {code: counts[code] for code in CONTRACT_CODES if counts[code] < 2} == {}


def test_every_expected_code_is_a_rejection_code_of_the_module() -> None:
    known = {code.value for code in RejectionCode}
    assert set(CONTRACT_CODES) <= known
    assert {case.code for case in BAD} <= set(CONTRACT_CODES)


def test_case_names_are_unique_short_kebab_case() -> None:
    names = [case.name for case in BAD + VALID]
    assert [name for name, n in Counter(names).items() if n > 1] == []
    assert [name for name in names if not NAME.match(name) or len(name) > 60] == []


def test_the_readme_table_counts_the_catalogue() -> None:
    readme = (DATA / "README.md").read_text("utf-8")
    table = {
        match["code"]: int(match["count"])
        for match in re.finditer(r"^\| `(?P<code>[a-z_]+)` +\| +(?P<count>\d+) +\|", readme, re.M)
    }
    counts = Counter(case.code or "valid" for case in BAD + VALID)
    assert table == dict(counts)


def test_the_data_files_stay_small() -> None:
    assert sum(path.stat().st_size for path in DATA.iterdir()) < 200 * 1024


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("case", params(BAD, divergent=True))
def test_a_bad_body_is_rejected_with_its_code(case: Case) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_request(case.body)
    assert caught.value.code == case.code, caught.value.description
    assert isinstance(caught.value.code, RejectionCode)


@pytest.mark.parametrize("case", params(BAD))
def test_a_rejection_describes_the_problem_briefly_without_echoing_the_body(case: Case) -> None:
    rejection = verdict(case.body)
    assert isinstance(rejection, RequestRejected)
    description = rejection.description
    assert description.strip()
    assert len(description) <= MAX_DESCRIPTION_CHARS, description
    if len(case.body) > MAX_DESCRIPTION_CHARS:
        # Any run of 64 characters holds one of these 48-character windows.
        text = case.body.decode("utf-8", "replace")
        windows = {description[i : i + 48] for i in range(0, max(len(description) - 47, 1), 16)}
        assert [w for w in windows if len(w) == 48 and w in text] == [], description


@pytest.mark.parametrize("case", params(VALID))
def test_a_valid_body_is_accepted(case: Case) -> None:
    request = verdict(case.body)
    assert isinstance(request, CustomerRequest), getattr(request, "description", request)


# ----------------------------------------------------------------------------- an oracle
# Python's json module, which we did not write, is the independent reading of RFC 8259 (with
# NaN and Infinity refused: RFC 8259 §6 has no such numbers, though json.loads accepts them).


@pytest.mark.parametrize("case", params(VALID))
def test_json_loads_reads_the_same_fields_as_the_accepted_request(case: Case) -> None:
    assert_json_loads_agrees(parse_request(case.body), case.body)


def assert_json_loads_agrees(request: CustomerRequest, body: bytes) -> None:
    fields = json.loads(as_text(body), parse_constant=refuse_constant)
    assert request.customer_id == fields.get("customerId", fields.get("customer_id"))
    assert request.text == fields["text"]
    assert request.channel == fields["channel"]
    assert request.idempotency_key == fields.get("idempotencyKey", fields.get("idempotency_key"))
    assert request.metadata == fields.get("metadata")


@pytest.mark.parametrize("case", params([c for c in BAD if c.code == "invalid_json"]))
def test_json_loads_also_refuses_every_body_that_is_not_strict_json(case: Case) -> None:
    with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
        json.loads(as_text(case.body), parse_constant=refuse_constant)


@pytest.mark.parametrize("case", params([c for c in BAD if c.code in SYNTAX_CHECKED_AFTER]))
def test_json_loads_parses_every_body_refused_for_a_later_rule(case: Case) -> None:
    # Decimal reads numbers of any size, so out-of-range numbers are still well-formed here.
    json.loads(
        as_text(case.body),
        parse_constant=refuse_constant,
        parse_int=Decimal,
        parse_float=Decimal,
    )


# ----------------------------------------------------------------------------- any input

SEEDS = [case.body for case in VALID if len(case.body) <= 2048]
TOKENS = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\\ud800", b"1e999", b"\x00"]
TOKENS += [b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"null", b"\\u00", b"\t"]


def assert_request_or_rejection(body: bytes) -> None:
    outcome = verdict(body)
    if isinstance(outcome, RequestRejected):
        assert isinstance(outcome.code, RejectionCode)
        assert outcome.description.strip()
    else:
        assert isinstance(outcome, CustomerRequest)
        assert_json_loads_agrees(outcome, body)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid body after a few byte-level mutations: flip, delete, insert, truncate."""
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, len(body)))
        if kind == "flip" and at < len(body):
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            body[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif kind == "truncate":
            del body[at:]
    return bytes(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_become_a_request_or_a_rejection(body: bytes) -> None:
    assert_request_or_rejection(body)


@settings(max_examples=300, deadline=None)
@given(mutated_bodies())
def test_a_mutated_valid_body_becomes_a_request_or_a_rejection(body: bytes) -> None:
    assert_request_or_rejection(body)
