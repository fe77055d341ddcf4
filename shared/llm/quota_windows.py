"""The windows a deployment's limits and learned accounting define, and their guard.

``DeploymentWindows`` is the state under ``shared.llm.limiter.DeploymentQuota``: the token
window and the request windows (1 s and 10 s, or 10 s only for a per-minute server) at this
instance's share of the deployment's TPM, a window per lane beside each, the pace each lane is
held to, what a call is charged, and the guard each window holds charges past its length
(``shared.llm.skew``). Booking a call charges every window and moves its lane's pace; the
quota plans and reconciles calls in them.
"""

from __future__ import annotations

import math

from shared.domain.messages import Priority
from shared.llm.accounting import AZURE as AZURE_MODEL
from shared.llm.accounting import AccountingInference, CallSize
from shared.llm.lanes import BATCH, BATCH_PACE_BURST_FRACTION, INTERACTIVE, LANES
from shared.llm.reservation import Reservation, call_size
from shared.llm.skew import SkewGuard
from shared.llm.windows import DEFAULT_GUARD_S, Charge, SlidingWindow

TOKEN_WINDOW_S = 10.0
REQUEST_WINDOWS_S = (1.0, 10.0)
RPM_PER_1000_TPM = 6
PACE_BURST_FRACTION = 0.2
"""How much of a token window may go out at once before pacing spreads the rest."""


class DeploymentWindows:
    """A deployment's windows (or this instance's share of them), as its accounting sets them."""

    def __init__(self, name: str, tpm: int | None, *, guard_s: float = DEFAULT_GUARD_S) -> None:
        self.name = name
        self.tpm = tpm
        self.share = 1.0
        self._guard = SkewGuard(guard_s)
        # GCRA theoretical arrival time of each lane's next call.
        self._tat: dict[Priority, float] = dict.fromkeys(LANES, -math.inf)
        self._pace_scale = 1.0
        self._tokens: SlidingWindow | None = None
        self._requests: list[SlidingWindow] = []
        # Per lane, a window beside each of the deployment's (tokens first, then requests).
        self._lanes: dict[Priority, list[SlidingWindow]] = {}
        self.inference: AccountingInference | None = None
        self.model = AZURE_MODEL
        if tpm is not None:
            if tpm <= 0:
                raise ValueError(f"deployment {name}: TPM must be positive")
            self.inference = AccountingInference(tpm)
            self._build_windows()

    def _build_windows(self) -> None:
        self._tokens = SlidingWindow(self._token_limit(self.share), self.model.window_s)
        self._requests = [
            SlidingWindow(limit, span)
            for span, limit in zip(
                self._request_spans(), self._request_limits(self.share), strict=True
            )
        ]
        self._lanes = {
            name: [SlidingWindow(w.limit, w.window_s) for w in self._core()] for name in LANES
        }
        self._tat = dict.fromkeys(LANES, -math.inf)
        self._apply_guard()

    def _core(self) -> list[SlidingWindow]:
        """The deployment's own windows: tokens, then requests."""
        return ([self._tokens] if self._tokens else []) + self._requests

    def _token_limit(self, share: float) -> float:
        assert self.tpm is not None
        # Whole tokens per window, rounded down: TPM 10,000 allows 1,666 per 10 s, not 1,666.7.
        return self.model.token_limit(self.tpm) * share

    def _request_spans(self) -> tuple[float, ...]:
        # A per-minute server enforces requests per 10 s only; Azure also per second.
        return REQUEST_WINDOWS_S[1:] if self.model.per_minute else REQUEST_WINDOWS_S

    def _request_limits(self, share: float) -> list[float]:
        assert self.tpm is not None
        rpm = max(1, self.tpm * RPM_PER_1000_TPM // 1000)
        # The per-window request allowance rounds up (60 RPM: 1 per 1 s and 10 per 10 s).
        return [max(1, math.ceil(rpm * span / 60.0)) * share for span in self._request_spans()]

    def _windows(self) -> list[SlidingWindow]:
        return self._core() + [w for windows in self._lanes.values() for w in windows]

    def set_share(self, share: float) -> None:
        """Use only ``share`` (0 < share <= 1) of the deployment's limits."""
        if self.tpm is None or not 0 < share <= 1:
            return
        # The pace owed so far was counted at the old share's rate: rescaled at the next plan.
        self._pace_scale *= self.share / share
        self.share = share
        assert self._tokens is not None
        self._tokens.set_limit(self._token_limit(share))
        for window, limit in zip(self._requests, self._request_limits(share), strict=True):
            window.set_limit(limit)

    def _rescale_pace(self, now: float) -> None:
        """Turn the pace each lane still owes into time at the current share's rate.

        A lane's next call waits until its theoretical arrival time, which each booking moves
        on by its tokens over the pace rate. A call booked at a share near zero (a newcomer
        before the others' charges leave) moves it minutes ahead; once the share has grown,
        that debt is owed at the larger rate, so it shrinks by the same factor, and the other
        way round when the share shrinks."""
        if self._pace_scale == 1.0:
            return
        for lane, tat in self._tat.items():
            if tat > now:
                self._tat[lane] = now + (tat - now) * self._pace_scale
        self._pace_scale = 1.0

    def _pace_rate(self, lane: Priority = INTERACTIVE) -> float:
        """Tokens per second that keep the lane's token window exactly full in steady state."""
        window = self._lanes[lane][0] if self._lanes else self._tokens
        assert window is not None
        return window.limit / window.span

    def _pace_tolerance(self, lane: Priority = INTERACTIVE) -> float:
        assert self._tokens is not None
        burst = BATCH_PACE_BURST_FRACTION if lane == BATCH else PACE_BURST_FRACTION
        return burst * self._tokens.span

    def charge_of(self, tokens: int | CallSize) -> float:
        """What the deployment's (learned) accounting charges a call, clamped to one window."""
        if self.tpm is None:
            return float(call_size(tokens).estimate)
        return float(min(self.model.charge_of(call_size(tokens)), self._token_limit(1.0)))

    @property
    def guard_s(self) -> float:
        """How long charges are currently held past the token window."""
        if self._tokens is None:
            return self._guard.base_s
        return self._guard.guard_for(self._tokens.window_s)

    def guard_for(self, window_s: float) -> float:
        """How long charges are currently held past a window of ``window_s``."""
        return self._guard.guard_for(window_s)

    def _apply_guard(self) -> None:
        for window in self._windows():
            window.set_guard(self._guard.guard_for(window.window_s))

    def _decay_skew(self, now: float) -> None:
        if self._guard.decay(now):
            self._apply_guard()

    def _book(self, reservation: Reservation, at: float, amount: float) -> None:
        """Charge ``amount`` tokens and one request at ``at`` in every window, the deployment's
        and the reservation's lane's."""
        amounts = [amount] + [1.0] * len(self._requests)
        for windows in (self._core(), self._lanes[reservation.lane]):
            for window, value in zip(windows, amounts, strict=True):
                charge = Charge(at, value)
                window.add(charge)
                reservation.charges.append((window, charge))
        lane = reservation.lane
        self._tat[lane] = max(self._tat[lane], at) + amount / self._pace_rate(lane)

    def _unpace(self, lane: Priority, tokens: float) -> None:
        """Tokens booked but not charged in the end go back to the lane's pace too."""
        self._tat[lane] -= tokens / self._pace_rate(lane)
