"""The raw chat endpoint the guards wrap: one HTTP call, no retries, failures sorted by kind.

An adapter (``shared/adapters/azure/openai_chat.py``) implements ``ChatEndpoint`` over the
openai SDK; the guards in this package see only these neutral types, so they never import an
SDK, and tests can drive them with a scripted endpoint.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RateLimitInfo:
    """The quota facts of the ``x-ratelimit-*`` and ``retry-after*`` response headers."""

    remaining_tokens: int | None = None
    remaining_requests: int | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class EndpointCall:
    """One chat-completion request addressed to a deployment."""

    deployment: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    schema_name: str = ""
    json_schema: dict[str, Any] | None = None
    timeout_s: float = 20.0
    stage: str = ""
    """The pipeline stage that asked (for the call's span)."""
    attempt: int = 1
    """Which HTTP attempt of one model call this is: 1 first, then one more per retry or 429."""
    quota_wait_s: float = 0.0
    """Seconds the call waited for its deployment's quota before it was sent."""


@dataclass(frozen=True)
class EndpointReply:
    """A successful HTTP answer, even one whose completion the content filter cut off."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str = ""
    rate: RateLimitInfo = field(default_factory=RateLimitInfo)


class ChatEndpoint(Protocol):
    """Sends one request; raises an ``EndpointError`` subclass on any failure."""

    async def complete(self, call: EndpointCall) -> EndpointReply: ...

    async def close(self) -> None: ...


class EndpointError(Exception):
    """A failed call, with whatever rate-limit headers came back."""

    kind = "error"

    def __init__(self, message: str, *, rate: RateLimitInfo | None = None) -> None:
        super().__init__(message)
        self.rate = rate or RateLimitInfo()


class EndpointThrottled(EndpointError):
    """HTTP 429: the deployment's TPM or RPM is spent."""

    kind = "throttled"


class EndpointServerError(EndpointError):
    """HTTP 5xx (and 408/409, which the service uses for its own transient trouble)."""

    kind = "server_error"

    def __init__(self, message: str, *, status: int, rate: RateLimitInfo | None = None) -> None:
        super().__init__(message, rate=rate)
        self.status = status


class EndpointTimeout(EndpointError):
    """No answer within the call's timeout."""

    kind = "timeout"


class EndpointUnreachable(EndpointError):
    """The connection failed or broke before an answer arrived."""

    kind = "connection"


class EndpointMalformed(EndpointError):
    """An answer arrived that is not a chat completion (bad JSON, missing fields)."""

    kind = "malformed"


class EndpointContentFiltered(EndpointError):
    """The provider's content filter refused the prompt (HTTP 400 ``content_filter``)."""

    kind = "content_filter"


class EndpointRejected(EndpointError):
    """A 4xx other than 429 and the content filter: the request itself, auth or deployment."""

    kind = "rejected"

    def __init__(
        self, message: str, *, status: int, code: str | None, rate: RateLimitInfo | None = None
    ) -> None:
        super().__init__(message, rate=rate)
        self.status = status
        self.code = code


TRANSIENT_ENDPOINT_ERRORS = (
    EndpointServerError,
    EndpointTimeout,
    EndpointUnreachable,
    EndpointMalformed,
)
"""Failures that say something about the deployment's health: retried, and counted by breakers."""


def _as_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date).

    Returns None when neither is present or parseable; never a negative number.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if math.isfinite(value):
            return max(0.0, value / divisor)
    raw_date = lowered.get("retry-after")
    if raw_date:
        try:
            parsed = email.utils.parsedate_to_datetime(raw_date)
        except (TypeError, ValueError):
            return None
        if parsed.tzinfo is None:
            return None
        current = time.time() if now is None else now
        return max(0.0, parsed.timestamp() - current)
    return None


def parse_rate_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitInfo:
    """The quota facts in a response's headers (any of them may be missing)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return RateLimitInfo(
        remaining_tokens=_as_int(lowered.get("x-ratelimit-remaining-tokens")),
        remaining_requests=_as_int(lowered.get("x-ratelimit-remaining-requests")),
        retry_after_s=parse_retry_after(lowered, now=now),
    )
