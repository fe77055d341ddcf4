"""A quota-aware limiter per deployment that charges what Azure OpenAI charges, when it charges it.

How Azure OpenAI meters a deployment: each request is charged on arrival with an *estimate*
(prompt tokens + ``max_tokens``) and counted as one request; the TPM limit is enforced over short
windows (about 10 s, so TPM/6 per window) and the RPM limit (6 RPM per 1,000 TPM) over 1 s and
10 s windows. Over the limit the answer is 429 with ``retry-after-ms`` / ``retry-after``.

The limiter mirrors that exactly, as a token bucket whose spent tokens flow back in one window
after they were spent (a sliding-window bucket). A classic continuous-refill bucket with a burst of
one window can admit up to two windows' worth inside a single window and so draws 429s exactly when
the deployment is busiest; this one never admits more than the window limit in *any* window (so
it is also safe against fixed, aligned windows), and in steady state it admits the full limit.

* ``plan`` finds the earliest moment a call fits every window, counting calls already reserved
  for the future, so concurrent callers queue first-come first-served without polling.
* Calls are also paced (GCRA, a continuous token bucket refilling at the window rate with a burst
  of a fifth of a window): without it a saturated deployment alternates between spending a whole
  window at once and idling until it expires, so latencies swing with the phase of the window.
* ``reserve`` books that slot; the caller sleeps until it (if within its wait budget) and sends.
  ``mark_sent`` moves the charge to the real send time, because the server counts arrivals.
* ``observe`` first lets ``shared.llm.accounting`` score the reading against the candidate
  accounting models (what a call is charged, over which window room is reported); Azure's model
  above is the prior, and when another one fits the server's answers the windows are rebuilt
  around it and every live booking recharged. Then it corrects the book: whatever the server has
  counted beyond our own charges (other instances over their share, a different estimator) is
  booked as a phantom charge until it must have left the server's window.
* ``throttle`` honours a 429's retry-after: nothing is planned for that deployment before it.
  Unless the 429's own remaining figures show room (a stray 429), the call was planned to fit
  and arrived later than planned: the retry-after measures that skew, which widens the guard
  of each window by at most a small share of that window and decays with time.
* ``defer`` tells a call that cannot wait within its budget when to come back, after the calls
  already sent away, spaced at the deployment's full rate, so the backlog sent away returns in
  order and never slower than the quota can serve it.

Whole calls cannot pack a window exactly: first-come, a call waits until the window has room for
*all* of it, so about half a call of room sits unused (0.91 of the TPM with calls of 13-21 % of a
window, 10,000 TPM). ``hold`` lets large calls wait unbooked so that the call fitting the room best
takes it, with an aging bound (``shared.llm.packing``); at 210,000 TPM calls are under 1 % of a
window and the loss is negligible either way.

Between instances the deployment's limits are split into shares (``set_share``) by
``shared.llm.ledger.ShareCoordinator``; the headers then catch whatever the shares miss.
All methods are synchronous: a plan and its reservation happen without an ``await`` in between, so
concurrent invocations on one event loop cannot both take the same slot.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.domain.messages import Priority
from shared.llm.accounting import AZURE as AZURE_MODEL
from shared.llm.accounting import (
    AccountingInference,
    AccountingModel,
    CallRecord,
    CallSize,
)
from shared.llm.endpoint import RateLimitInfo
from shared.llm.lanes import (
    BATCH,
    BATCH_BOOK_AHEAD_S,
    BATCH_PACE_BURST_FRACTION,
    INTERACTIVE,
    INTERACTIVE_MARGIN,
    LANES,
    MIN_BATCH_SHARE,
)
from shared.llm.packing import PACK_MIN_FRACTION, YIELD_S, WaitingRoom
from shared.llm.quota_metrics import LaneSnapshot, QuotaSnapshot
from shared.llm.windows import DEFAULT_GUARD_S, Charge, SlidingWindow

log = logging.getLogger(__name__)

TOKEN_WINDOW_S = 10.0
REQUEST_WINDOWS_S = (1.0, 10.0)
RPM_PER_1000_TPM = 6
MAX_GUARD_FRACTION = 0.05
"""What a surprise 429 may add to a window's guard, as a share of that window: a second of
skew widens a 10 s window by at most 0.5 s and a 1 s window by at most 0.05 s."""
WHOLE_SECOND_STEP_FRACTION = 0.005
"""A whole-second retry-after only bounds the skew (it is rounded up): each such 429 widens the
guard by this share of the token window, up to the cap."""
GUARD_HALF_LIFE_S = 20.0
"""The widening halves every this many seconds, whatever the number of answers."""
PACE_BURST_FRACTION = 0.2
"""How much of a token window may go out at once before pacing spreads the rest."""
BOOK_NOW_S = BATCH_BOOK_AHEAD_S
"""A slot this close to now is taken at once: waiting unbooked for it would gain nothing."""


@dataclass
class Reservation:
    """A booked slot: its charges in every window, and when it may be sent."""

    deployment: str
    tokens: int
    at: float
    charges: list[tuple[SlidingWindow, Charge]] = field(default_factory=list)
    sent_at: float | None = None
    size: CallSize | None = None
    record: CallRecord | None = None
    lane: Priority = INTERACTIVE


def _size(tokens: int | CallSize) -> CallSize:
    """A bare token count is a charge that no accounting model splits (it is all ``max``)."""
    return tokens if isinstance(tokens, CallSize) else CallSize(0, tokens)


class DeploymentQuota:
    """The limiter state of one deployment (or of this instance's share of it)."""

    def __init__(self, name: str, tpm: int | None, *, guard_s: float = DEFAULT_GUARD_S) -> None:
        self.name = name
        self.tpm = tpm
        self.share = 1.0
        self.blocked_until = -math.inf
        self.throttles = 0
        """429s answered for this deployment (whatever their cause)."""
        self._base_guard = guard_s
        self._skew = 0.0  # the measured extra skew, as of ``_skew_at``
        self._skew_at = -math.inf
        # GCRA theoretical arrival time of each lane's next call.
        self._tat: dict[Priority, float] = dict.fromkeys(LANES, -math.inf)
        self._deferred_tat = -math.inf  # the same, for the calls told to come back later
        self._tokens: SlidingWindow | None = None
        self._requests: list[SlidingWindow] = []
        # Per lane, a window beside each of the deployment's (tokens first, then requests).
        self._lanes: dict[Priority, list[SlidingWindow]] = {}
        self._batch_wanted_at = -math.inf
        self._live: deque[Reservation] = deque()
        self.room = WaitingRoom()
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
        self.share = share
        assert self._tokens is not None
        self._tokens.set_limit(self._token_limit(share))
        for window, limit in zip(self._requests, self._request_limits(share), strict=True):
            window.set_limit(limit)

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
            return float(_size(tokens).estimate)
        return float(min(self.model.charge_of(_size(tokens)), self._token_limit(1.0)))

    def plan(self, tokens: int | CallSize, now: float, lane: Priority = INTERACTIVE) -> float:
        """The earliest monotonic time a call of ``tokens`` (a count or a ``CallSize``) in
        ``lane`` may be sent (``shared.llm.lanes``: what each lane may use of the window)."""
        at = max(now, self.blocked_until)
        self._decay_skew(now)
        for window in self._windows():
            window.prune(now)
        self._prune_live(now)
        if self._tokens is None:
            return at
        if lane == BATCH:
            self._batch_wanted_at = now
        self._set_lane_limits(now)
        at = max(at, self._tat[lane] - self._pace_tolerance(lane))
        charge = self.charge_of(tokens)
        amounts = [charge] + [1.0] * len(self._requests)
        # Each window's answer is max(not_before, a time of its own): one pass settles them all.
        for window, amount in zip(self._lanes[lane], amounts, strict=True):
            at = window.earliest(amount, at)
        at = self._tokens.earliest(charge, at)
        return max([at, *(window.earliest(1, at) for window in self._requests)])

    def hold(
        self, key: object, tokens: int | CallSize, lane: Priority, at: float, now: float
    ) -> float | None:
        """Whether a call (``key``) planned for ``at`` books that slot now (None) or waits
        unbooked until the time returned and plans again, so the call that fits the room best
        goes first (``shared.llm.packing``; large calls only, and never for long), and batch
        above its floor lets interactive calls go first (``books_ahead``). Until the call has
        booked or given up, the caller ends with ``unhold``."""
        if self._tokens is None:
            return None
        charge = self.charge_of(tokens)
        if charge >= PACK_MIN_FRACTION * self._tokens.limit:
            if at - now <= BOOK_NOW_S:
                self.room.enter(key, charge, now, now)
                room = self._tokens.limit - self._tokens.used(since=now - self._tokens.span)
                if self.room.steps_aside(key, charge, room, now):
                    self.room.enter(key, charge, now + YIELD_S, now)
                    return now + YIELD_S
            else:
                self.room.enter(key, charge, at, now)
                aged_at = self.room.aged_at(key, self._tokens.window_s)
                if now < aged_at:
                    return min(at, aged_at)
        if at - now <= BOOK_NOW_S or self.books_ahead(lane, now):
            return None
        return at

    def unhold(self, key: object, now: float) -> None:
        """The call booked its slot or gave up: it no longer waits."""
        self.room.leave(key, now)

    def books_ahead(self, lane: Priority, now: float) -> bool:
        """Whether a call in ``lane`` may book a slot later than now: always for interactive;
        for batch only while, in every window (tokens and requests, whichever binds), its share
        of what was charged in the last window and booked ahead is under its floor (the queue
        ahead may be longer than a window)."""
        if lane != BATCH or self._tokens is None:
            return True
        for window, batch_window in zip(self._core(), self._lanes[BATCH], strict=True):
            if MIN_BATCH_SHARE * window.limit < 1.0:
                continue  # too small to hold a share (one request per second)
            since = now - window.window_s
            total = window.used(since=since)
            if batch_window.used(since=since) >= MIN_BATCH_SHARE * max(total, window.limit):
                return False
        return True

    def _set_lane_limits(self, now: float) -> None:
        """Batch leaves room for the interactive demand just seen; interactive leaves batch its
        floor while batch has work waiting."""
        core = self._core()
        interactive_use = max(
            lane_window.used(since=now - window.window_s) / window.limit
            for window, lane_window in zip(core, self._lanes[INTERACTIVE], strict=True)
        )
        reserve = interactive_use + INTERACTIVE_MARGIN if interactive_use > 0 else 0.0
        batch_share = max(MIN_BATCH_SHARE, 1.0 - reserve)
        assert self._tokens is not None
        batch_waiting = now - self._batch_wanted_at < self._tokens.window_s
        interactive_share = 1.0 - MIN_BATCH_SHARE if batch_waiting else 1.0
        for i, window in enumerate(core):
            self._lanes[BATCH][i].set_limit(max(1.0, window.limit * batch_share))
            self._lanes[INTERACTIVE][i].set_limit(max(1.0, window.limit * interactive_share))

    def used_share(self, now: float) -> float:
        """The largest share of the whole deployment's window (tokens, or requests in any
        request window) this instance's own calls have charged in the current window, booked
        ahead included: what it holds until those charges leave, whatever its share now.
        Usage booked on the headers' evidence is someone else's and does not count."""
        if self._tokens is None:
            return 0.0
        fulls = [self._token_limit(1.0), *self._request_limits(1.0)]
        return max(self._own(i, now) / full for i, full in enumerate(fulls))

    def _own(self, index: int, now: float) -> float:
        """What this instance's calls charged in the current ``index``-th window (tokens,
        then requests): the sum of its lanes' windows, which hold its own charges only."""
        window = self._core()[index]
        return sum(w[index].used(since=now - window.window_s) for w in self._lanes.values())

    def lane_usage(self, now: float) -> dict[str, float]:
        """Tokens each lane has charged in the current window (booked ahead included)."""
        if self._tokens is None:
            return {}
        since = now - self._tokens.window_s
        return {str(name): windows[0].used(since=since) for name, windows in self._lanes.items()}

    def reserve(
        self, tokens: int | CallSize, at: float, lane: Priority = INTERACTIVE
    ) -> Reservation:
        """Book a call of ``tokens`` in ``lane`` at ``at`` (as returned by ``plan``)."""
        size = _size(tokens)
        reservation = Reservation(self.name, size.estimate, at, size=size, lane=lane)
        if self._tokens is not None:
            # The server clamps an oversized estimate to one window; so do we.
            self._book(reservation, at, self.charge_of(size))
            self._live.append(reservation)
        return reservation

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

    def _prune_live(self, now: float) -> None:
        horizon = now - max(w.span for w in self._windows()) if self._windows() else now
        while self._live and (
            not self._live[0].charges or max(self._live[0].at, self._live[0].sent_at or 0) < horizon
        ):
            self._live.popleft()

    def release(self, reservation: Reservation) -> None:
        """Give back a slot that was never used (the caller gave up before sending)."""
        if reservation.sent_at is None:
            self.refund(reservation)

    def defer(self, tokens: int | CallSize, earliest: float) -> float:
        """When a call that cannot wait now should come back: not before ``earliest`` (its own
        plan), and after the calls already sent away, at the rate the whole deployment serves.

        Without this every rescheduled message would return as soon as the next window opens,
        find the slots taken by those that stayed, and circle again; spread out, they come back
        in order and the broker carries a fraction of the re-sends.

        The spacing is the deployment's full rate, not this instance's share. A share is a
        snapshot: a burst meets a small one (the idle floor, or a split made before the burst),
        and messages spaced at it would come back no faster than that share however much it
        grows, and would keep the demand this instance reports (and so its share) that low.
        Spaced at the full rate, the backlog returns at least as fast as any share can serve it;
        what does not fit is sent away again, one broker send per surplus return.
        """
        if self._tokens is None:
            return earliest
        at = max(earliest, self._deferred_tat)
        full = self._token_limit(1.0)
        self._deferred_tat = at + self.charge_of(tokens) / (full / self._tokens.span)
        return at

    def refund(self, reservation: Reservation) -> None:
        """The server refused the call (429) and so charged nothing for it: neither do we."""
        for window, charge in reservation.charges:
            window.remove(charge)
            if window is self._tokens:
                self._tat[reservation.lane] -= charge.amount / self._pace_rate(reservation.lane)
        reservation.charges.clear()
        if self.inference is not None and reservation.record is not None:
            self.inference.refused(reservation.record)

    def mark_sent(self, reservation: Reservation, now: float) -> None:
        """The call left now: the server will count it from its arrival, not from the plan."""
        reservation.sent_at = max(now, reservation.at)
        for _, charge in reservation.charges:
            charge.at = max(charge.at, reservation.sent_at)
        if self.inference is not None and reservation.size is not None:
            reservation.record = CallRecord(reservation.sent_at, reservation.size)
            self.inference.sent(reservation.record)

    def throttle(
        self,
        retry_after_s: float | None,
        now: float,
        *,
        rate: RateLimitInfo | None = None,
        charge: float | None = None,
    ) -> None:
        """A 429: plan nothing before the server's retry-after (half a window if it gave none).

        With a known quota the call was planned to fit, so unless the server's own remaining
        figures (``rate``) show room for it (``charge`` tokens and a request: a stray 429, a
        forced one, a server hiccup), the server saw our calls later than we sent them. The
        retry-after measures that skew: exactly when it has a fraction (``retry-after-ms``),
        only as an upper bound when it is whole seconds. The skew widens every window's guard,
        each by at most ``MAX_GUARD_FRACTION`` of its own length, and decays with time.
        """
        wait = retry_after_s if retry_after_s is not None else TOKEN_WINDOW_S / 2
        self.throttles += 1
        self.blocked_until = max(self.blocked_until, now + wait)
        if self.tpm is None or self._had_room(rate, charge):
            return
        self._decay_skew(now)
        precise = retry_after_s is not None and retry_after_s != math.floor(retry_after_s)
        if precise:
            self._skew = max(self._skew, wait)
        else:
            # Only an upper bound: step up, and again on each further 429, up to the cap.
            step = min(wait, WHOLE_SECOND_STEP_FRACTION * self.model.window_s)
            self._skew = min(self._skew + step, MAX_GUARD_FRACTION * self.model.window_s)
        self._skew_at = now
        self._apply_guard()

    @staticmethod
    def _had_room(rate: RateLimitInfo | None, charge: float | None) -> bool:
        if rate is None or rate.remaining_tokens is None or rate.remaining_requests is None:
            return False
        return rate.remaining_requests >= 1 and rate.remaining_tokens >= (charge or 0.0)

    @property
    def guard_s(self) -> float:
        """How long charges are currently held past the token window."""
        if self._tokens is None:
            return self._base_guard
        return self._guard_for(self._tokens.window_s)

    def guard_for(self, window_s: float) -> float:
        """How long charges are currently held past a window of ``window_s``."""
        return self._guard_for(window_s)

    def _guard_for(self, window_s: float) -> float:
        return self._base_guard + min(self._skew, MAX_GUARD_FRACTION * window_s)

    def _apply_guard(self) -> None:
        for window in self._windows():
            window.set_guard(self._guard_for(window.window_s))

    def _decay_skew(self, now: float) -> None:
        if self._skew <= 0.0 or now <= self._skew_at:
            return
        self._skew *= 0.5 ** ((now - self._skew_at) / GUARD_HALF_LIFE_S)
        self._skew_at = now
        if self._skew < 1e-3:
            self._skew = 0.0
        self._apply_guard()

    def observe(
        self,
        reservation: Reservation,
        rate: RateLimitInfo,
        now: float,
        *,
        usage: tuple[int, int] | None = None,
    ) -> None:
        """Reconcile with the server's remaining-quota headers on the answer to ``reservation``.

        ``usage`` is the answer's (prompt, completion) tokens, when it has them. The reading
        first teaches the accounting inference; if that settles on another model, the windows
        are rebuilt around it and every live booking recharged.

        Whatever the server has counted beyond our own charges, and beyond the other instances'
        shares, is usage we did not know about; it is booked (at the call's send time, so it
        leaves no later than the server lets it go) and later calls plan around it. While the
        inference still doubts the current model, nothing is booked: a reading taken against
        the wrong window would be mistaken for someone else's traffic.

        The server may compute the headers when it admits the call (our charges up to the send
        time are what it has seen) or when it answers (our charges up to now, including calls
        sent while this one was in flight). Both readings are taken and the smaller gap is
        believed, so our own traffic is never mistaken for someone else's.
        """
        sent = reservation.sent_at if reservation.sent_at is not None else reservation.at
        if self.inference is None or self._tokens is None:
            return
        if usage is not None and reservation.record is not None:
            self.inference.answered(reservation.record, *usage)
            if self.model.charge == "usage":
                self._settle_usage(reservation, usage)
        if rate.remaining_tokens is not None:
            changed = self.inference.observe(rate.remaining_tokens, (sent, now))
            if changed is not None:
                self._adopt(changed, now)
        if not self._model_trusted():
            return
        if rate.remaining_tokens is not None:
            global_limit = self._token_limit(1.0)
            self._reconcile(
                self._tokens,
                global_limit,
                rate.remaining_tokens,
                sent,
                now,
                tolerance=max(8.0, 0.01 * global_limit),
            )
        if self._requests and rate.remaining_requests is not None and not self.model.per_minute:
            self._reconcile_requests(rate.remaining_requests, sent, now)

    def _model_trusted(self) -> bool:
        assert self.inference is not None
        loss = self.inference.loss
        return loss[self.model] <= min(loss.values()) + 1e-9

    def _settle_usage(self, reservation: Reservation, usage: tuple[int, int]) -> None:
        """A server that charges usage charged this call its actual tokens: shrink our booking."""
        token_windows = (self._tokens, self._lanes[reservation.lane][0])
        for window, charge in reservation.charges:
            if any(window is w for w in token_windows):
                charge.amount = float(min(charge.amount, sum(usage)))

    def _adopt(self, model: AccountingModel, now: float) -> None:
        """Repack around ``model``: new windows, every live booking charged as it charges."""
        log.info(
            "deployment %s: the server accounts as %s (was %s); repacking",
            self.name,
            model.name,
            self.model.name,
        )
        self.model = model
        self._build_windows()
        for reservation in self._live:
            if not reservation.charges:
                continue
            at = reservation.sent_at if reservation.sent_at is not None else reservation.at
            size = reservation.size or CallSize(0, reservation.tokens)
            record = reservation.record
            completion = record.completion if record is not None else None
            amount = min(model.charge_of(size, completion), self._token_limit(1.0))
            reservation.charges = []
            self._book(reservation, at, float(amount))
        for window in self._windows():
            window.prune(now)

    def snapshot(self, now: float) -> QuotaSnapshot | None:
        """The learned accounting, this instance's limits and what is charged in the current
        window as of ``now`` (booked ahead included), per lane too; None without a TPM."""
        if self._tokens is None or self.inference is None:
            return None
        since = now - self._tokens.window_s
        requests = self._requests[-1]
        return QuotaSnapshot(
            deployment=self.name,
            accounting=self.model.name,
            charge=self.model.charge,
            window_s=self._tokens.window_s,
            observations=self.inference.observations,
            settled=self.inference.settled,
            share=self.share,
            token_limit=self._tokens.limit,
            tokens_used=self._own(0, now),
            request_limit=requests.limit,
            requests_used=self._own(len(self._requests), now),
            guard_s=round(self.guard_s, 3),
            throttles=self.throttles,
            lanes={
                str(name): LaneSnapshot(round(windows[0].limit, 1), windows[0].used(since=since))
                for name, windows in self._lanes.items()
            },
        )

    def _reconcile_requests(self, remaining: int, sent: float, now: float) -> None:
        """Azure reports the smaller room of the 1 s and 10 s request windows. Predict that
        figure from our own requests; only a reading below the prediction reveals someone
        else's, and it is booked in the window whose room the prediction found smallest."""
        limits = self._request_limits(1.0)
        gaps: list[tuple[float, SlidingWindow, float]] = []
        for window, limit in zip(self._requests, limits, strict=True):
            span = window.window_s
            # Whichever moment the server took the reading at, it has seen at least this many
            # of ours: believe the larger count, so our own requests are never taken for others'.
            ours = max(
                window.used(since=sent - span, until=sent),
                window.used(since=now - span, until=now),
            )
            others_allowed = max(0.0, limit - window.limit)
            gaps.append((limit - ours - others_allowed, window, limit))
        predicted, binding, _ = min(gaps, key=lambda g: g[0])
        unknown = predicted - remaining
        if unknown >= 1.0:
            log.info(
                "deployment %s: server counts %.0f more requests than booked; holding them back",
                self.name,
                unknown,
            )
            binding.add(Charge(sent, unknown))

    def _reconcile(
        self,
        window: SlidingWindow,
        global_limit: float,
        remaining: int,
        sent: float,
        now: float,
        *,
        tolerance: float,
    ) -> None:
        span = window.window_s
        ours = max(
            window.used(since=sent - span, until=sent),
            window.used(since=now - span, until=now),
        )
        others_allowed = max(0.0, global_limit - window.limit)
        unknown = (global_limit - remaining) - ours - others_allowed
        if unknown > tolerance:
            log.info(
                "deployment %s: server counts %.0f more than booked; holding them back",
                self.name,
                unknown,
            )
            window.add(Charge(sent, unknown))


class QuotaLimiter:
    """One ``DeploymentQuota`` per deployment, shared by every invocation in the process."""

    def __init__(
        self, deployment_tpm: Mapping[str, int], *, guard_s: float = DEFAULT_GUARD_S
    ) -> None:
        self._tpm = dict(deployment_tpm)
        self._guard = guard_s
        self._quotas: dict[str, DeploymentQuota] = {}

    def quota(self, deployment: str) -> DeploymentQuota:
        """The deployment's state; a deployment without a configured TPM is limited only by
        the server's 429s."""
        found = self._quotas.get(deployment)
        if found is None:
            found = DeploymentQuota(deployment, self._tpm.get(deployment), guard_s=self._guard)
            self._quotas[deployment] = found
        return found

    def tpm(self, deployment: str) -> int | None:
        return self._tpm.get(deployment)

    def snapshots(self, now: float) -> list[QuotaSnapshot]:
        """Every quota-limited deployment used so far, as of ``now``."""
        found = (quota.snapshot(now) for quota in list(self._quotas.values()))
        return [snapshot for snapshot in found if snapshot is not None]
