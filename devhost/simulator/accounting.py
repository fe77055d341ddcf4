"""Accounting profiles: how a deployment charges calls, over which windows, and what it reports.

A profile is chosen per deployment (``DeploymentLimits.accounting``). The client never sees the
name; it can only tell the profiles apart by the headers and answers they produce.

``azure`` (the default) is Azure OpenAI's documented model:

* a call is charged its prompt tokens + ``max_tokens`` on arrival;
* tokens are enforced over a 10 s window of ``TPM // 6``;
* requests over a 1 s window of ``ceil(RPM / 60)`` and a 10 s window of ``ceil(RPM / 6)``;
* ``x-ratelimit-remaining-tokens`` is what is left of the 10 s token window, and
  ``x-ratelimit-remaining-requests`` the smaller of what the two request windows have left;
* a 429 carries ``retry-after-ms`` (exact) and ``retry-after`` (whole seconds, rounded up).

``maxtokens-minute`` is an independent reading of the same service, as other rate-limit models
implement it:

* a call is charged its ``max_tokens`` only (the prompt is free);
* tokens are enforced over a 60 s sliding window of ``TPM``;
* requests over a 10 s window of ``ceil(TPM / 1000)``;
* both remaining headers are what is left *of the minute*: ``TPM`` minus the tokens charged in
  the last 60 s, and six 10 s allowances minus the requests of the last 60 s;
* a 429 carries ``retry-after`` in whole seconds and no ``retry-after-ms``.

``usage-minute`` is a gateway that meters what calls actually used, as Azure API Management's
``azure-openai-token-limit`` policy does with ``estimate-prompt-tokens="false"``
(https://learn.microsoft.com/azure/api-management/azure-openai-token-limit-policy): "the
remaining tokens per counter-key are calculated using the actual token usage from the response
of the model", so a call may be sent "that exceed[s] the token limit", after which "all succeeding
requests will be blocked by the policy until the token limit frees up again":

* a call is charged nothing on arrival and prompt + completion tokens when it is answered;
* it is admitted while the tokens charged in the last 60 s are under ``TPM`` (whatever its size).
  The page does not say whether the policy's minute slides or is fixed; a sliding one is
  modelled, and a client that never overruns it never overruns a fixed one either;
* otherwise as ``maxtokens-minute``: requests over a 10 s window of ``ceil(TPM / 1000)`` (the
  policy limits tokens only; this is Azure's 10 s allowance of the deployment behind it, whose
  1 s window is left out), remaining figures of the minute (the page lets the remaining-tokens
  header be named; this profile names it as Azure does), and ``Retry-After`` in whole seconds
  (the policy's default header) with no ``retry-after-ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

ChargeModel = Literal["prompt+max", "max", "usage"]


@dataclass(frozen=True)
class AccountingProfile:
    """One accounting model; the limits are computed from a deployment's TPM and RPM."""

    name: str
    charge: ChargeModel
    token_window_s: float
    per_minute_remaining: bool
    """Remaining figures are what is left of the last minute, not of the enforcing windows."""
    retry_after_ms: bool
    """Whether a 429 carries ``retry-after-ms`` besides the whole-second ``retry-after``."""
    one_second_requests: bool
    """Azure's 1 s request window (``ceil(RPM / 60)``) besides the 10 s one."""
    requests_from_tpm: bool
    """The 10 s request allowance is ``ceil(TPM / 1000)`` rather than ``ceil(RPM / 6)``."""

    @property
    def charged_on_answer(self) -> bool:
        """A call is charged what it used, when it is answered, not its size on arrival."""
        return self.charge == "usage"

    def charge_for(self, prompt_tokens: int, max_tokens: int) -> int:
        """What a call is charged on arrival (before the clamp to the token window)."""
        if self.charged_on_answer:
            return 0  # charged when answered (``DeploymentLimiter.charge_usage``)
        if self.charge == "max":
            return max(0, max_tokens)
        return max(0, prompt_tokens) + max(0, max_tokens)

    def room_needed(self, charged: int) -> int:
        """The tokens a call must find left in the window to be admitted: its charge, or, when
        it is charged on its answer, any room at all (the window may then be overdrawn)."""
        return max(charged, 1) if self.charged_on_answer else charged

    def token_capacity(self, tpm: int) -> int:
        """Tokens allowed per token window (whole tokens, rounded down, at least one)."""
        return max(1, int(tpm * self.token_window_s) // 60)

    def request_windows(self, tpm: int, rpm: int) -> tuple[tuple[float, int], ...]:
        """``(window seconds, requests allowed)`` of every request window, shortest first."""
        per_10s = math.ceil(tpm / 1000) if self.requests_from_tpm else math.ceil(rpm / 6)
        long = (10.0, max(1, per_10s))
        if self.one_second_requests:
            return ((1.0, max(1, math.ceil(rpm / 60))), long)
        return (long,)


AZURE = AccountingProfile(
    name="azure",
    charge="prompt+max",
    token_window_s=10.0,
    per_minute_remaining=False,
    retry_after_ms=True,
    one_second_requests=True,
    requests_from_tpm=False,
)
MAXTOKENS_MINUTE = AccountingProfile(
    name="maxtokens-minute",
    charge="max",
    token_window_s=60.0,
    per_minute_remaining=True,
    retry_after_ms=False,
    one_second_requests=False,
    requests_from_tpm=True,
)

USAGE_MINUTE = replace(MAXTOKENS_MINUTE, name="usage-minute", charge="usage")

PROFILES: dict[str, AccountingProfile] = {
    p.name: p for p in (AZURE, MAXTOKENS_MINUTE, USAGE_MINUTE)
}
"""Every profile by name; ``azure`` is the default."""


def profile(name: str) -> AccountingProfile:
    """The profile called ``name``; ``KeyError`` names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown accounting profile {name!r}; one of {sorted(PROFILES)}") from None
