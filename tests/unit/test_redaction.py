"""PII and secret redaction: what is replaced, what is kept, and log records through the filter."""

from __future__ import annotations

import io
import logging
import re
from collections import namedtuple
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.telemetry.redaction import (
    CARD,
    EMAIL,
    IBAN,
    PHONE,
    SECRET,
    RedactingFilter,
    iban_is_valid,
    luhn_is_valid,
    redact,
    redact_value,
)

# Credential-shaped inputs are assembled at run time so that no file in the repository
# holds one; they are random, not real.
FAKE_KEY = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA" + "+/abc="
FAKE_WORD = "hunt" + "er2x"


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it pass Luhn, computed independently of the module."""
    for digit in "0123456789":
        candidate = body + digit
        total = 0
        for position, ch in enumerate(reversed(candidate)):
            value = int(ch) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable: one digit always completes a Luhn number")


def grouped(number: str, separator: str, size: int = 4) -> str:
    return separator.join(number[i : i + size] for i in range(0, len(number), size))


VISA = with_check_digit("411111111111111")
MASTERCARD = with_check_digit("555555555555444")
AMEX = with_check_digit("37828224631000")
NINETEEN = with_check_digit("622126000000000000")


# ------------------------------------------------------------------------------ emails


@pytest.mark.parametrize(
    "email",
    [
        "john.doe@example.com",
        "j+tag@mail.example.co.uk",
        "UPPER_case-99@Sub.Domain.ORG",
        "o'brien@example.ie",
        "jöhn@exämple.de",
    ],
)
def test_emails_are_replaced_by_a_marker(email: str) -> None:
    redacted = redact(f"please reply to {email}, thanks")

    assert email not in redacted
    assert redacted == f"please reply to {EMAIL}, thanks"


def test_an_email_in_a_query_string_keeps_the_parameter_name() -> None:
    redacted = redact("https://shop.example/track?id=7&email=bob@example.com&lang=en")

    assert redacted == f"https://shop.example/track?id=7&email={EMAIL}&lang=en"


# ------------------------------------------------------------------------------- cards


@pytest.mark.parametrize(
    "card",
    [
        VISA,
        grouped(VISA, " "),
        grouped(VISA, "-"),
        grouped(MASTERCARD, " "),
        f"{AMEX[:4]} {AMEX[4:10]} {AMEX[10:]}",
        NINETEEN,
    ],
)
def test_luhn_valid_card_numbers_are_replaced(card: str) -> None:
    redacted = redact(f"my card is {card}. expiry 12/27")

    assert redacted == f"my card is {CARD}. expiry 12/27"


def test_a_sixteen_digit_number_failing_luhn_is_kept_as_a_reference() -> None:
    # Decision: non-Luhn digit runs are order, tracking or account references, not cards.
    not_a_card = VISA[:-1] + str((int(VISA[-1]) + 1) % 10)
    assert not luhn_is_valid(not_a_card)

    assert redact(f"tracking {grouped(not_a_card, ' ')}") == f"tracking {grouped(not_a_card, ' ')}"


def test_a_card_followed_by_a_year_loses_only_the_card() -> None:
    assert redact(f"{grouped(VISA, ' ')} 2027") == f"{CARD} 2027"


# ------------------------------------------------------------------------------ phones


@pytest.mark.parametrize(
    "phone",
    [
        "+1 (555) 123-4567",
        "+1-555-123-4567",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+442079460958",
        "+33 1 23 45 67 89",
        "+49 30 12345678",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-1234",
        "020 7946 0958",
        "07911 123456",
        "01 23 45 67 89",
        "06.12.34.56.78",
        "(030) 1234567",
    ],
)
def test_phone_numbers_in_common_formats_are_replaced(phone: str) -> None:
    assert redact(f"reach me on {phone} after 5") == f"reach me on {PHONE} after 5"


@pytest.mark.parametrize(
    "text",
    ["call me at 5551234567", "my mobile: 07911123456", "Tel. 5551234", "phone # 555 1234"],
)
def test_a_bare_number_after_a_phone_word_is_a_phone_number(text: str) -> None:
    redacted = redact(text)

    assert redacted.endswith(PHONE)
    assert not re.search(r"\d{4}", redacted)


# ----------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl",
            f"Authorization: Bearer {SECRET}",
        ),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: Basic {SECRET}"),
        ("header bearer abcdefghijklmnop1234 sent", f"header bearer {SECRET} sent"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl done",
            f"jwt {SECRET} done",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;"
            + "SharedAccess"
            + "Key="
            + FAKE_KEY,
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;"
            f"SharedAccessKey={SECRET}",
        ),
        (
            "AccountName=devstoreaccount1;Account"
            + "Key="
            + FAKE_KEY * 2
            + ";BlobEndpoint=http://127.0.0.1:10000",
            f"AccountName=devstoreaccount1;AccountKey={SECRET};BlobEndpoint=http://127.0.0.1:10000",
        ),
        (
            "GET https://acct.blob.core.windows.net/c/b.json?sv=2022-11-02&sp=r&sig=AbC%2Bd%3D&x=1",
            f"GET https://acct.blob.core.windows.net/c/b.json?sv=2022-11-02&sp=r&sig={SECRET}&x=1",
        ),
        ("api-key: 0123456789abcdef0123456789abcdef", f"api-key: {SECRET}"),
        (
            '{"pass' + 'word": "' + FAKE_WORD + '", "user": "ops"}',
            f'{{"password": "{SECRET}", "user": "ops"}}',
        ),
        ("db pass" + "word=" + FAKE_WORD + "!", f"db password={SECRET}"),
        ("blob 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 end", f"blob {SECRET} end"),
        ("key Zk3pQ9xLmT2vW8rN5sJ1cY7bH4gD6fA0eU end", f"key {SECRET} end"),
        (
            "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
            "-----END " + "PRIVATE KEY-----",
            SECRET,
        ),
    ],
)
def test_secrets_are_replaced_and_their_names_kept(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("iban", ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"])
def test_valid_ibans_are_replaced(iban: str) -> None:
    assert iban_is_valid(iban)
    assert redact(f"pay to {iban} today") == f"pay to {IBAN} today"


def test_an_iban_with_a_wrong_check_digit_is_not_an_iban() -> None:
    assert not iban_is_valid("DE88 3704 0044 0532 0130 00")


# ------------------------------------------------------------------------------- kept


@pytest.mark.parametrize(
    "text",
    [
        "order #12345 shipped",
        "ORD-2024-0042 and ORD-12345",
        "refund of $129.99 (EUR 1,299.00)",
        "delivered 2024-05-01 at 10:30 or 10:30:15, i.e. 01.05.2024",
        "2024-05-01T10:30:00+01:00",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "conversation c-0123456789abcdef01234567:intent:0",
        "lock 123e4567-e89b-12d3-a456-426614174000",
        'File "/home/runner/work/Switchboard/shared/agents/intent.py", line 12',
        "host 192.168.100.200 python 3.11.4 zip 98052-6399",
        "basic questions about bearer bonds",
        "max_tokens=400 prompt_tokens: 12",
        "AzureMonitorTraceExporter started",
    ],
)
def test_order_ids_amounts_dates_times_and_correlation_ids_are_kept(text: str) -> None:
    assert redact(text) == text


def test_redact_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError, match="takes a str"):
        redact(12345)  # type: ignore[arg-type]


def test_redact_value_walks_containers_and_leaves_other_values_alone() -> None:
    point = namedtuple("point", "label count")
    value = {
        "customer": {"email": "a.b@example.com", "age": 42},
        "notes": ["call 555-123-4567", b"raw bytes"],
        "pair": point("x@y.org", 3),
        "tags": frozenset({"vip", "z@example.net"}),
    }

    redacted = redact_value(value)

    assert redacted == {
        "customer": {"email": EMAIL, "age": 42},
        "notes": [f"call {PHONE}", b"raw bytes"],
        "pair": point(EMAIL, 3),
        "tags": frozenset({"vip", EMAIL}),
    }


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Near misses that make a backtracking pattern try every start: nothing to redact.
        ("a" * 200_000 + "@", "a" * 200_000 + "@"),
        ("1 " * 100_000, "1 " * 100_000),
        ("x@" * 100_000, "x@" * 100_000),
        ("+1 " * 70_000, "+1 " * 70_000),
        # One long token-shaped run: a single secret.
        ("A1b2" * 50_000, SECRET),
    ],
)
def test_redaction_stays_linear_on_adversarial_text(text: str, expected: str) -> None:
    assert redact(text) == expected


# --------------------------------------------------------------------------- property

CHECK_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")

cards = st.builds(
    lambda body, separator, size: grouped(with_check_digit(body), separator, size),
    st.text("0123456789", min_size=12, max_size=18),
    st.sampled_from(["", " ", "-"]),
    st.sampled_from([4, 5, 6]),
)
phones = st.from_regex(
    r"\+?[0-9]{1,3}[ .-]?\(?[0-9]{2,4}\)?[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}", fullmatch=True
)
kept = st.sampled_from(["ORD-2024-0042", "#12345", "$129.99", "2024-05-01", "10:30", "Bearer"])
noise = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
pieces = st.one_of(st.emails(), cards, phones, kept, noise, st.text("0123456789 -", max_size=24))
texts = st.lists(
    st.tuples(pieces, st.sampled_from(["", " ", ", ", "\n", ":", "="])), max_size=8
).map(lambda parts: "".join(piece + glue for piece, glue in parts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_redact_is_idempotent_and_leaves_no_card_number_or_email(text: str) -> None:
    once = redact(text)

    assert redact(once) == once
    assert not [run for run in DIGIT_RUN.findall(once) if luhn_is_valid(run)]
    assert not CHECK_EMAIL.search(once)


@given(st.emails(), noise, noise)
def test_no_generated_email_survives_whatever_surrounds_it(
    email: str, before: str, after: str
) -> None:
    assert email not in redact(before + email + after)


# ------------------------------------------------------------------------- log records


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, list[logging.LogRecord]]]:
    """A logger whose only handler has the filter, writing formatted text to a buffer."""
    stream = io.StringIO()
    records: list[logging.LogRecord] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(lambda record: records.append(record) or True)
    log = logging.getLogger("tests.redaction.captured")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, stream, records
    log.removeHandler(handler)
    log.propagate = True
    log.setLevel(logging.NOTSET)
    handler.close()


def test_a_log_call_with_an_email_in_its_arguments_is_redacted(
    captured: tuple[logging.Logger, io.StringIO, list[logging.LogRecord]],
) -> None:
    log, stream, records = captured

    log.info("customer %s wrote about %s", "jane@example.com", "ORD-2024-0042")

    assert stream.getvalue() == f"INFO customer {EMAIL} wrote about ORD-2024-0042\n"
    assert records[0].args is None
    assert records[0].getMessage() == f"customer {EMAIL} wrote about ORD-2024-0042"


def test_an_exception_message_with_pii_is_redacted_in_the_traceback(
    captured: tuple[logging.Logger, io.StringIO, list[logging.LogRecord]],
) -> None:
    log, stream, records = captured
    card = grouped(VISA, " ")

    try:
        raise ValueError(f"card {card} declined for jane@example.com")
    except ValueError:
        log.exception("payment failed")

    output = stream.getvalue()
    assert "Traceback (most recent call last)" in output
    assert f"ValueError: card {CARD} declined for {EMAIL}" in output
    assert card not in output
    assert "jane@example.com" not in output
    assert records[0].exc_info is None


def test_extra_fields_and_unformattable_arguments_are_redacted_too(
    captured: tuple[logging.Logger, io.StringIO, list[logging.LogRecord]],
) -> None:
    log, stream, records = captured

    log.warning("bad %d format", "+44 20 7946 0958", extra={"customer_email": "x@example.org"})

    output = stream.getvalue()
    assert "unformattable log arguments: TypeError" in output
    assert PHONE in output
    assert "7946" not in output
    assert records[0].customer_email == EMAIL  # type: ignore[attr-defined]
