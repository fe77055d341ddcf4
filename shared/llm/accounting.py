"""What a deployment charges a call, and over which window: learned from its own answers.

Azure OpenAI documents one accounting (a call charged prompt + ``max_tokens`` on arrival, TPM/6
per 10 s window, remaining figures of that window). Other servers speaking the same protocol
(a gateway, another rate-limit model, a later service version) charge differently; a limiter
that packs by an assumed charge then leaves quota unused or draws 429s. So each deployment
keeps a small set of candidate models and scores them against what the server says:

* charge: ``prompt+max`` (Azure's estimate), ``max`` (``max_tokens`` only) or ``usage``
  (prompt + the completion actually generated, known once the answer arrives);
* window: 10 s of TPM/6, with remaining figures of that window (Azure), or 60 s of the whole
  TPM, with remaining figures of the minute.

Every ``x-ratelimit-remaining-tokens`` reading is compared with what each candidate predicts
from our own calls (the server may compute the figure when it admits the call or when it answers,
so both moments are tried and the closer one taken). A prediction of *more* room than the server
reports may be someone else's traffic and costs little; a prediction of *less* room than the
server reports cannot be explained by anyone and costs in full. Losses decay, so a server that
changes is followed. Azure's model is the prior: it holds until another candidate has been scored
``MIN_OBSERVATIONS`` times and its loss is under half of the current model's by a clear margin;
with the candidates' predictions as far apart as they are (the window alone moves the reading
by five sixths of the TPM), a server that matches one of them is learned within a handful of
answers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

ChargeKind = Literal["prompt+max", "max", "usage"]

MIN_OBSERVATIONS = 3
"""Readings scored before the prior can be replaced."""
LOSS_DECAY = 0.85
"""Each new reading keeps this much of a candidate's past loss."""
FOREIGN_WEIGHT = 0.1
"""The loss of predicting more room than reported (someone else may have used it)."""
UNSEEN_S = 0.05
"""Calls sent this close before a reading may not have reached the server when it took it
(concurrent calls leave together and arrive one by one): a reading may count them or not."""
SWITCH_RATIO = 0.5
"""A candidate replaces the current model when its loss is below this share of the model's."""
STEADY_AFTER = 50
SAMPLE_EVERY = 5
"""After ``STEADY_AFTER`` readings one in ``SAMPLE_EVERY`` is scored: still following a server
that changes within seconds, at a fifth of the work on a busy deployment."""


@dataclass(frozen=True)
class CallSize:
    """What a call asks for: its prompt (as estimated before sending) and its ``max_tokens``."""

    prompt: int
    max_tokens: int

    @property
    def estimate(self) -> int:
        """Azure's charge: prompt + ``max_tokens``."""
        return self.prompt + self.max_tokens


@dataclass(frozen=True)
class AccountingModel:
    """One way of charging calls and reporting room."""

    charge: ChargeKind
    window_s: float

    @property
    def name(self) -> str:
        return f"{self.charge}/{self.window_s:g}s"

    @property
    def per_minute(self) -> bool:
        """Tokens and requests are reported (and enforced) per minute, with no 1 s window."""
        return self.window_s >= 60.0

    def charge_of(self, size: CallSize, completion: int | None = None) -> int:
        """What the server charges ``size``; for ``usage``, before the answer, the most it can."""
        if self.charge == "max":
            return size.max_tokens
        if self.charge == "usage" and completion is not None:
            return size.prompt + completion
        return size.prompt + size.max_tokens

    def room_needed(self, charge: float) -> float:
        """The room a call of ``charge`` must find in the token window to be sent: its charge,
        or, where the server charges usage, any room at all. Such a server admits a call
        while its window is not spent and lets the answer overdraw it; the calls after wait
        until the overdraw leaves (API Management's ``azure-openai-token-limit``: "all
        succeeding requests will be blocked ... until the token limit frees up again")."""
        return min(charge, 1.0) if self.charge == "usage" else charge

    def token_limit(self, tpm: int) -> int:
        """Tokens per window: whole tokens, rounded down (10,000 TPM: 1,666 per 10 s)."""
        return max(1, int(tpm * self.window_s) // 60)


AZURE = AccountingModel("prompt+max", 10.0)
"""Azure OpenAI's documented accounting: the prior."""
CANDIDATES: tuple[AccountingModel, ...] = tuple(
    AccountingModel(charge, window)
    for window in (10.0, 60.0)
    for charge in ("prompt+max", "max", "usage")
)


@dataclass
class CallRecord:
    """One call as the server may have counted it."""

    sent_at: float
    size: CallSize
    prompt: int | None = None
    """The server's own prompt count, once it answered."""
    completion: int | None = None

    def charged(self, model: AccountingModel) -> int:
        size = self.size if self.prompt is None else CallSize(self.prompt, self.size.max_tokens)
        return model.charge_of(size, self.completion)


class AccountingInference:
    """Scores the candidate models of one deployment against its remaining-tokens readings."""

    def __init__(self, tpm: int, *, prior: AccountingModel = AZURE) -> None:
        self.tpm = tpm
        self.model = prior
        self.observations = 0
        self.switches = 0
        self._skipped = 0
        self.loss: dict[AccountingModel, float] = {m: 0.0 for m in CANDIDATES}
        self._calls: deque[CallRecord] = deque()
        self._tolerance = max(8.0, 0.0005 * tpm)
        self._horizon_s = max(m.window_s for m in CANDIDATES) + 5.0

    @property
    def settled(self) -> bool:
        """Whether enough readings were scored for the model to be trusted."""
        return self.observations >= MIN_OBSERVATIONS

    def sent(self, record: CallRecord) -> None:
        """A call left for the server."""
        self._calls.append(record)

    def refused(self, record: CallRecord) -> None:
        """The server refused the call (429): it charged nothing."""
        for i, call in enumerate(self._calls):
            if call is record:
                del self._calls[i]
                return

    def answered(self, record: CallRecord, prompt: int, completion: int) -> None:
        record.prompt = prompt
        record.completion = completion

    def observe(
        self, remaining_tokens: int, moments: tuple[float, ...], own: CallRecord | None = None
    ) -> AccountingModel | None:
        """Score one reading taken at one of ``moments`` (on the answer to ``own``, which the
        reading counts); the new model if it changed."""
        if not moments:
            return None
        if self.observations >= STEADY_AFTER and self._skipped < SAMPLE_EVERY - 1:
            self._skipped += 1
            return None
        self._skipped = 0
        self._prune(max(moments))
        sums = {
            (window, t): self._sums(window, t)
            for window in {m.window_s for m in CANDIDATES}
            for t in moments
        }
        unseen_sums = {t: self._sums(UNSEEN_S, t, skip=own) for t in moments}
        for model in CANDIDATES:
            limit = model.token_limit(self.tpm)
            best = math.inf
            for t in moments:
                used = _used(model, sums[(model.window_s, t)])
                unseen = _used(model, unseen_sums[t])
                fewest = max(0.0, limit - used)  # every call we sent counted
                most = max(0.0, limit - used + unseen)  # the latest ones not yet arrived
                if remaining_tokens > most:  # the server sees less than this model says we spent
                    cost = max(0.0, remaining_tokens - most - self._tolerance)
                else:  # the server sees more: others, or this model charges too little
                    cost = FOREIGN_WEIGHT * max(0.0, fewest - remaining_tokens - self._tolerance)
                best = min(best, cost)
            self.loss[model] = self.loss[model] * LOSS_DECAY + best
        self.observations += 1
        if not self.settled:
            return None
        best_model = min(CANDIDATES, key=lambda m: (self.loss[m], m != self.model))
        current = self.loss[self.model]
        if best_model != self.model and (
            self.loss[best_model] < SWITCH_RATIO * current
            and current - self.loss[best_model] > 2 * self._tolerance
        ):
            self.model = best_model
            self.switches += 1
            return best_model
        return None

    def _prune(self, now: float) -> None:
        horizon = now - self._horizon_s
        while self._calls and self._calls[0].sent_at < horizon:
            self._calls.popleft()

    def _sums(
        self, window: float, t: float, *, skip: CallRecord | None = None
    ) -> tuple[float, float, float, float]:
        """Prompt, max_tokens, usage (answered) and prompt+max (in flight) of the calls sent in
        ``(t - window, t]`` (but ``skip``)."""
        prompt = max_tokens = usage = pending = 0.0
        since = t - window
        for call in self._calls:
            if since < call.sent_at <= t and call is not skip:
                p = call.prompt if call.prompt is not None else call.size.prompt
                prompt += p
                max_tokens += call.size.max_tokens
                if call.completion is not None:
                    usage += p + call.completion
                else:
                    pending += p + call.size.max_tokens
        return prompt, max_tokens, usage, pending


def _used(model: AccountingModel, sums: tuple[float, float, float, float]) -> float:
    prompt, max_tokens, usage, pending = sums
    if model.charge == "max":
        return max_tokens
    if model.charge == "usage":
        return usage + pending
    return prompt + max_tokens
