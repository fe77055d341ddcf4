"""Redaction of personal data and secrets from text, before any of it leaves the process.

Logs, span attributes and exception messages can all carry customer text, so everything that is
exported passes through :func:`redact` first. Each finding is replaced by a typed marker
(``[EMAIL]``, ``[CARD]``, ``[PHONE]``, ``[IBAN]``, ``[SECRET]``) so an operator still sees *what*
was there without seeing it.

The rules lean towards redacting too much where a miss would leak a secret, and towards keeping
what operators need to correlate: order ids (``ORD-2024-0042``, ``#12345``), amounts, dates,
times, trace ids (32 hex), span ids and the project's derived ids (24 hex) are left alone.

Decisions worth knowing:

* Payment cards are 13-19 digits, written contiguously or in groups of 3+ digits separated by
  single spaces or dashes, and must pass the Luhn check. Digit runs that fail it are kept: they
  are order, tracking or account references far more often than mistyped cards, and about one
  random number in ten passes Luhn anyway and is redacted.
* Phone numbers are recognised by shape: international (``+`` and 7-15 digits), North American
  (``(555) 123-4567``, ``555.123.4567``, ``1-800-555-1234``), national numbers with a trunk ``0``
  (``020 7946 0958``, ``07911 123456``, ``01 23 45 67 89``), and any 7-15 digit number shortly
  after a word such as *phone*, *call*, *mobile* or *text*. A bare digit run with no such
  context is not a phone number (it is usually an order or reference number).
* Bare 32-hex strings are kept because trace ids look exactly like that; secrets of that shape
  (an Azure OpenAI key, for one) are caught by their name (``api-key: ...``), not by their look.
  Hex runs of 40+ characters and mixed-case base64/base64url runs that look random are redacted.
* :func:`redact` is idempotent: redacting redacted text changes nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

EMAIL: Final = "[EMAIL]"
CARD: Final = "[CARD]"
PHONE: Final = "[PHONE]"
IBAN: Final = "[IBAN]"
SECRET: Final = "[SECRET]"
MARKERS: Final = frozenset({EMAIL, CARD, PHONE, IBAN, SECRET})

_MAX_PASSES = 3
_MAX_DEPTH = 32

# --------------------------------------------------------------------------------- secrets

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_AUTHORIZATION = re.compile(
    r"(?i)(?<![A-Za-z0-9])(authorization[\"']?\s*[:=]\s*[\"']?)"
    r"((?:basic|bearer|digest|negotiate|sharedaccesssignature)\s+)?"
    r"([^\s\"',;]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]{16,})")
_SECRET_KEYS = (
    r"password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|apikey|subscription[_-]?key"
    r"|account[_-]?key|shared[_-]?access[_-]?key|sig|signature|sas[_-]?token"
    r"|(?:access|refresh|id|auth)[_-]?token|token|private[_-]?key"
)
_KEY_VALUE = re.compile(
    rf"(?i)(?<![A-Za-z0-9])((?:{_SECRET_KEYS})[\"']?\s*[:=]\s*)"
    r"(\"[^\"\n]*\"|'[^'\n]*'|[^\s;&,\"'<>(){}\[\]]+)"
)


def _redact_pem(text: str) -> str:
    if "PRIVATE KEY" not in text:
        return text
    return _PEM.sub(SECRET, text)


def _redact_jwt(text: str) -> str:
    if "eyJ" not in text:
        return text
    return _JWT.sub(SECRET, text)


def _redact_authorization(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(3) == SECRET:
            return match.group(0)
        return f"{match.group(1)}{match.group(2) or ''}{SECRET}"

    return _AUTHORIZATION.sub(replace, text)


def _redact_bearer(text: str) -> str:
    return _BEARER.sub(lambda m: m.group(1) + SECRET, text)


def _redact_key_values(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        value = match.group(2)
        quote = value[0] if value[:1] in ("'", '"') else ""
        inner = value[1:-1] if quote else value
        if inner in MARKERS:
            return match.group(0)
        return f"{match.group(1)}{quote}{SECRET}{quote}"

    return _KEY_VALUE.sub(replace, text)


# ----------------------------------------------------------------------------------- email

# The local part takes every RFC 5322 atext character. Some of them also delimit URLs, query
# strings and quoted text, so what precedes the last of those stays (``&email=`` in
# ``&email=bob@example.com``); the lookbehind makes a match start where a run starts, which
# keeps the scan linear on long text.
_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"
_PROTECTED = frozenset("=&?/|{}")
_QUOTES = frozenset("'`")
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_LOCAL}+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_][\w-]*")


def _redact_emails(text: str) -> str:
    if "@" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        local = found[: found.index("@")]
        # A quote opens quoted text unless it sits inside a name (o'brien@...).
        cut = max(
            (
                i
                for i, ch in enumerate(local)
                if ch in _PROTECTED or (ch in _QUOTES and (i == 0 or not local[i - 1].isalnum()))
            ),
            default=-1,
        )
        if 0 <= cut < len(local) - 1:
            return found[: cut + 1] + EMAIL
        return EMAIL

    return _EMAIL.sub(replace, text)


# ------------------------------------------------------------------------ high-entropy tokens

_PADDED_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/]{16,}={1,2}(?![A-Za-z0-9+/=_-])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}(?![A-Za-z0-9+/_-])")
_LONG_HEX = re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{40,}(?![A-Za-z0-9])")
_HEX_ONLY = re.compile(r"^[0-9a-fA-F]+$")


def _char_class(ch: str) -> int:
    if ch.isdigit():
        return 0
    if ch.isupper():
        return 1
    if ch.islower():
        return 2
    return 3


def _looks_random(segment: str, *, min_length: int) -> bool:
    """True for strings shaped like key material rather than words or identifiers.

    Random base64 switches between upper case, lower case and digits on most characters;
    CamelCase identifiers and words rarely do, and hex ids are left to the hex rule.
    """
    if len(segment) < min_length or _HEX_ONLY.match(segment):
        return False
    has_upper = any(ch.isupper() for ch in segment)
    has_lower = any(ch.islower() for ch in segment)
    if not (has_upper and has_lower):
        return False
    classes = [_char_class(ch) for ch in segment]
    switches = sum(1 for a, b in itertools.pairwise(classes) if a != b)
    if switches < 0.3 * (len(segment) - 1):
        return False
    counts = Counter(segment)
    entropy = -sum(n / len(segment) * math.log2(n / len(segment)) for n in counts.values())
    return entropy >= 3.5


def _redact_tokens(text: str) -> str:
    if len(text) < 17:
        return text
    text = _PADDED_BASE64.sub(
        lambda m: SECRET if _looks_random(m.group(0).rstrip("="), min_length=16) else m.group(0),
        text,
    )

    def token(match: re.Match[str]) -> str:
        found = match.group(0)
        if any(_looks_random(part, min_length=24) for part in found.split("/")):
            return SECRET
        return found

    text = _TOKEN.sub(token, text)

    def hex_run(match: re.Match[str]) -> str:
        found = match.group(0)
        if any(ch.isdigit() for ch in found) and any(ch.isalpha() for ch in found):
            return SECRET
        return found

    return _LONG_HEX.sub(hex_run, text)


# ------------------------------------------------------------------------------------ IBAN

_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
    r"(?:(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?|[A-Za-z0-9]{11,30})"
    r"(?![A-Za-z0-9])"
)


def iban_is_valid(candidate: str) -> bool:
    """ISO 13616 check: 15-34 characters whose mod-97 remainder, rearranged, is 1."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum() or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def _redact_ibans(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        groups = found.split(" ")
        # A following word of four letters can look like one more group; try shorter spans.
        for end in range(len(groups), 0, -1):
            head = " ".join(groups[:end])
            if iban_is_valid(head):
                tail = found[len(head) :]
                return IBAN + tail
        return found

    return _IBAN.sub(replace, text)


# ----------------------------------------------------------------------------------- cards

# ASCII digits only: a card number is never written in other scripts' digits.
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_SEPARATED_GROUP = re.compile(r"[0-9]+|[ -]")


def luhn_is_valid(digits: str) -> bool:
    """The payment-card check digit test (ISO/IEC 7812-1)."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        value = int(ch)
        if i % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_windows(groups: list[str]) -> list[tuple[int, int]]:
    """Group spans ``[i, j)`` that form a Luhn-valid 13-19 digit card, leftmost-longest first."""
    windows: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            group = groups[j]
            # Cards are printed in groups of 3+ digits; shorter groups are lists or dates.
            if len(group) < 3:
                break
            digits += group
            if len(digits) > 19:
                break
            if len(digits) >= 13 and luhn_is_valid(digits):
                best = j + 1
        if best is not None:
            windows.append((i, best))
            i = best
        else:
            i += 1
    return windows


def _redact_cards(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        parts = _SEPARATED_GROUP.findall(found)
        groups = parts[0::2]
        seps = parts[1::2]
        windows = _card_windows(groups)
        if not windows:
            return found
        out: list[str] = []
        g = 0
        for start, end in windows:
            for k in range(g, start):
                out.append(groups[k] + seps[k])
            out.append(CARD)
            if end - 1 < len(seps):
                out.append(seps[end - 1])
            g = end
        for k in range(g, len(groups)):
            out.append(groups[k] + (seps[k] if k < len(seps) else ""))
        return "".join(out)

    if not any(ch.isdigit() for ch in text):
        return text
    return _DIGIT_RUN.sub(replace, text)


# ---------------------------------------------------------------------------------- phones

_NOT_BEFORE_NUMBER = r"(?<![\w+$€£¥#/.:-])"
_NOT_AFTER_NUMBER = r"(?![\w/:-]|[.,]\d)"
_INTERNATIONAL = re.compile(
    r"(?<![\w+])\+\d{1,3}"
    r"(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,10}|[ .-]\d{1,10}|\d{4,12})"
    r"(?:[ .-]\d{1,10}){0,6}(?!\d)"
)
_NORTH_AMERICAN = re.compile(
    _NOT_BEFORE_NUMBER
    + r"(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    + _NOT_AFTER_NUMBER
)
_TRUNK_ZERO = re.compile(
    _NOT_BEFORE_NUMBER + r"(?:\(0\d{1,4}\)|0\d{1,4})(?:[ .-]\d{2,8}){1,4}" + _NOT_AFTER_NUMBER
)
_PHONE_WORD = re.compile(
    r"(?i)\b(?:phone|telephone|tel|mobile|cell|cellphone|landline|call|text|sms|whatsapp|fax)\b"
    r"([^\d\n\[\]]{0,24}?)"
    r"(\+?\(?\d(?:[ .()-]{0,2}\d){6,14})(?!\d)"
)
_NOT_A_PHONE_CONTEXT = re.compile(
    r"(?i)order|invoice|\bref|account|ticket|\bcase\b|tracking|parcel|\bitem|\bsku\b|\bid\b"
)
# A date such as 01.05.2024 or 2024-05-01, not followed by a further group of the same kind
# (06.12.34.56.78 is a French phone number, not a date).
_DATE_PREFIX = re.compile(r"^\(?\d{1,4}([./-])\d{1,2}\1\d{1,4}(?!\d)(?!\1\d)")


def _digit_count(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _phone_by_shape(pattern: re.Pattern[str], low: int, high: int) -> Callable[[str], str]:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if not low <= _digit_count(found) <= high or _DATE_PREFIX.match(found):
            return found
        return PHONE

    return lambda text: pattern.sub(replace, text)


_redact_international = _phone_by_shape(_INTERNATIONAL, 7, 15)
_redact_north_american = _phone_by_shape(_NORTH_AMERICAN, 10, 11)
_redact_trunk_zero = _phone_by_shape(_TRUNK_ZERO, 9, 12)


def _redact_phone_words(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        gap, number = match.group(1), match.group(2)
        if _NOT_A_PHONE_CONTEXT.search(gap) or _DATE_PREFIX.match(number):
            return match.group(0)
        if not 7 <= _digit_count(number) <= 15:
            return match.group(0)
        start = match.start(2) - match.start(0)
        return match.group(0)[:start] + PHONE

    return _PHONE_WORD.sub(replace, text)


def _redact_phones(text: str) -> str:
    if not any(ch.isdigit() for ch in text):
        return text
    for rule in (
        _redact_international,
        _redact_north_american,
        _redact_trunk_zero,
        _redact_phone_words,
    ):
        text = rule(text)
    return text


# ------------------------------------------------------------------------------ public API

# Order matters: secrets first (connection strings and URLs hold emails and digits that would
# otherwise be redacted piecemeal), then emails, tokens, IBANs, cards and finally phones, whose
# patterns are the loosest and must not eat parts of a card or an IBAN.
_RULES: tuple[Callable[[str], str], ...] = (
    _redact_pem,
    _redact_jwt,
    _redact_authorization,
    _redact_bearer,
    _redact_key_values,
    _redact_emails,
    _redact_tokens,
    _redact_ibans,
    _redact_cards,
    _redact_phones,
)


def redact(text: str) -> str:
    """Return ``text`` with emails, cards, phones, IBANs and secrets replaced by typed markers.

    Called on everything that leaves the process (log records, span attributes and events).
    Idempotent, and linear in the length of ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"redact() takes a str, not {type(text).__name__}")
    # One pass almost always suffices; a second confirms nothing new surfaced where a
    # replacement changed what a neighbouring pattern's boundary checks saw.
    for _ in range(_MAX_PASSES):
        result = text
        for rule in _RULES:
            result = rule(result)
        if result == text:
            return result
        text = result
    return text


def redact_value(value: object) -> object:
    """Redact every string inside ``value``: a str, or mappings, lists, tuples and sets of them.

    Mapping keys are kept (they are field names); other types are returned unchanged.
    """
    return _redact_value(value, 0)


def _redact_value(value: object, depth: int) -> object:
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_DEPTH:
        # Deeper nesting than any payload here has is a cycle or an attack; keep nothing of it.
        return SECRET
    if isinstance(value, Mapping):
        return {key: _redact_value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        items = [_redact_value(item, depth + 1) for item in value]
        if hasattr(value, "_fields"):  # a named tuple takes its fields positionally
            named: Any = type(value)
            return cast(object, named(*items))
        return tuple(items)
    if isinstance(value, set | frozenset):
        return type(value)(_redact_value(item, depth + 1) for item in value)
    return value


# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "correlation_id", "trace_id", "span_id", "_switchboard_redacted"}


class RedactingFilter(logging.Filter):
    """Redacts a log record in place before any handler formats or exports it.

    The message is formatted (``msg % args``), redacted, and stored back with the arguments
    cleared, so no handler can re-format the raw arguments. The exception and stack text are
    rendered once, redacted and cached on the record (``exc_text``); ``exc_info`` is dropped so
    that exporters reading the live exception object cannot bypass redaction. String values
    passed through ``extra=`` are redacted too. Attach it to every handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_switchboard_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception as exc:
            # The handler would fail the same way and print the raw arguments to stderr.
            message = (
                f"{record.msg!s} [unformattable log arguments: {exc.__class__.__name__}] "
                f"{record.args!r}"
            )
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_RECORD_ATTRIBUTES:
                setattr(record, key, redact_value(value))
        record._switchboard_redacted = True
        return True
