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

Whole calls cannot pack a window exactly: first-come, about half a call of room sits unused (0.91
of the TPM with calls of 13-21 % of a window, 10,000 TPM). ``hold`` lets large calls wait unbooked
so that the call fitting the room best takes it (``shared.llm.packing``); at 210,000 TPM calls
are under 1 % of a window and the loss is negligible either way.

Between instances the deployment's limits are split into shares (``set_share``) by
``shared.llm.ledger.ShareCoordinator``; the headers then catch whatever the shares miss. When a
share grows, the calls still waiting for slots booked at the smaller one are booked again
(``rebook_waiting``).
All methods are synchronous: a plan and its reservation happen without an ``await`` in between, so
concurrent invocations on one event loop cannot both take the same slot.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping

from shared.domain.messages import Priority
from shared.llm.accounting import (
    AccountingModel,
    CallRecord,
    CallSize,
)
from shared.llm.endpoint import RateLimitInfo
from shared.llm.lanes import (
    BATCH,
    BATCH_BOOK_AHEAD_S,
    INTERACTIVE,
    LANES,
    batch_books_ahead,
    set_lane_limits,
)
from shared.llm.packing import PACK_MIN_FRACTION, YIELD_S, WaitingRoom
from shared.llm.quota_metrics import LaneSnapshot, QuotaSnapshot
from shared.llm.quota_windows import TOKEN_WINDOW_S, DeploymentWindows
from shared.llm.reconcile import book_unknown_requests, book_unknown_tokens
from shared.llm.reservation import Reservation, call_size
from shared.llm.skew import had_room
from shared.llm.windows import DEFAULT_GUARD_S, peak_use

__all__ = ["DeploymentQuota", "QuotaLimiter", "Reservation"]

log = logging.getLogger(__name__)

MIN_UNANNOUNCED_WAIT_S = 1.0
"""The shortest pause after a 429 without a retry-after: Azure's 1 s request window."""
BOOK_NOW_S = BATCH_BOOK_AHEAD_S
"""A slot this close to now is taken at once: waiting unbooked for it would gain nothing."""


MAX_AWAY_WINDOWS = 3
"""The longest a call told to come back later stays away, in token windows (unless a 429's
retry-after says longer): a plan further out is one made at a share that will have moved."""


class DeploymentQuota(DeploymentWindows):
    """The limiter state of one deployment (or of this instance's share of it)."""

    def __init__(self, name: str, tpm: int | None, *, guard_s: float = DEFAULT_GUARD_S) -> None:
        self.blocked_until = -math.inf
        self.share_grows_at = -math.inf
        """When this instance's share, held below its split while another instance's charges
        leave the window (``shared.llm.ledger``), is looked at again: a plan later than that
        comes from a share about to grow, and a call is better off waiting for it than
        being sent away for as long as the small share would take."""
        self.throttles = 0
        """429s answered for this deployment (whatever their cause)."""
        self._deferred_tat = -math.inf  # as a lane's pace, for the calls told to come back later
        self._batch_wanted_at = -math.inf
        self._live: deque[Reservation] = deque()
        self.room = WaitingRoom()
        super().__init__(name, tpm, guard_s=guard_s)

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
        self._rescale_pace(now)
        at = max(at, self._tat[lane] - self._pace_tolerance(lane))
        # Alone on the deployment, a call goes when the server would take it; instances that
        # share it keep to their shares whole (each overdrawing its own would add up).
        charge = self.charge_of(tokens)
        need = self.model.room_needed(charge) if self.share >= 1.0 else charge
        amounts = [need] + [1.0] * len(self._requests)
        # Each window's answer is max(not_before, a time of its own): one pass settles them all.
        for window, amount in zip(self._lanes[lane], amounts, strict=True):
            at = window.earliest(amount, at)
        at = self._tokens.earliest(need, at)
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
        """Whether a call in ``lane`` may book a slot later than now: always for interactive,
        for batch while it is under its floor (``shared.llm.lanes.batch_books_ahead``)."""
        if lane != BATCH or self._tokens is None:
            return True
        return batch_books_ahead(self._core(), self._lanes[BATCH], now)

    def _set_lane_limits(self, now: float) -> None:
        """Batch leaves room for the interactive demand just seen; interactive leaves batch its
        floor while batch has work waiting."""
        assert self._tokens is not None
        batch_waiting = now - self._batch_wanted_at < self._tokens.window_s
        set_lane_limits(self._core(), self._lanes, now, batch_waiting=batch_waiting)

    def used_share(self, now: float) -> float:
        """The largest share of the whole deployment's window (tokens, or requests in any
        request window) this instance's own calls take in any window from now on, booked ahead
        included: what it holds until those charges leave, whatever its share now.
        Usage booked on the headers' evidence is someone else's and does not count."""
        if self._tokens is None:
            return 0.0
        fulls = [self._token_limit(1.0), *self._request_limits(1.0)]
        return max(self._own(i, now) / full for i, full in enumerate(fulls))

    def _own(self, index: int, now: float) -> float:
        """What this instance's calls take of the ``index``-th window (tokens, then requests)
        from now on, at its fullest: its lanes' windows together, which hold its own charges
        only, booked ahead included (``peak_use``)."""
        # The deployment's own window length (a share's window may be stretched).
        span = [self.model.window_s, *self._request_spans()][index]
        return peak_use((w[index] for w in self._lanes.values()), span, now)

    def waiting_demand(self, now: float) -> dict[Priority, float]:
        """Per lane, the tokens per minute this instance's waiting calls ask for beyond what it
        sends: the tokens booked for later than now, as if they were to go within one window.
        Calls wait only when the share is spent, so this is demand the share did not meet."""
        if self._tokens is None:
            return dict.fromkeys(LANES, 0.0)
        per_minute = 60.0 / self.model.window_s
        return {
            name: windows[0].used(since=now) * per_minute for name, windows in self._lanes.items()
        }

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
        size = call_size(tokens)
        reservation = Reservation(self.name, size.estimate, at, size=size, lane=lane)
        if self._tokens is not None:
            # The server clamps an oversized estimate to one window; so do we.
            self._book(reservation, at, self.charge_of(size))
            self._live.append(reservation)
        return reservation

    def _prune_live(self, now: float) -> None:
        horizon = now - max(w.span for w in self._windows()) if self._windows() else now
        while self._live and (
            not self._live[0].charges or max(self._live[0].at, self._live[0].sent_at or 0) < horizon
        ):
            self._live.popleft()

    def rebook_waiting(self, now: float) -> None:
        """Plan the calls still waiting for their slots again, in the order of their slots, at
        the current share (none later than its slot): after a share grows, slots booked at the
        smaller one would hold them to its pace, and the grown share would go unused. They
        leave the live bookings while unbooked (planning prunes those without charges)."""
        waiting = [r for r in self._live if r.sent_at is None and r.charges and r.at > now]
        waiting.sort(key=lambda r: r.at)
        moving = {id(r) for r in waiting}
        self._live = deque(r for r in self._live if id(r) not in moving)
        for reservation in waiting:
            self.release(reservation)
        for reservation in waiting:
            size = reservation.size or CallSize(0, reservation.tokens)
            reservation.at = min(self.plan(size, now, reservation.lane), reservation.at)
            self._book(reservation, reservation.at, self.charge_of(size))
            self._live.append(reservation)

    def release(self, reservation: Reservation) -> None:
        """Give back a slot that was never used (the caller gave up before sending)."""
        if reservation.sent_at is None:
            self.refund(reservation)

    def wait_for(self, at: float, now: float) -> float:
        """How long a call planned for ``at`` should stay away: until then, but at most
        ``MAX_AWAY_WINDOWS`` token windows (a server's retry-after is kept in full). A plan
        made at a share near zero (minutes, at a few tokens a second: a newcomer while the
        others' charges leave, or an instance others outbid) says nothing of the share to
        come, and a message sent away that long would spend its whole retry budget on it."""
        wait = at - now
        if self._tokens is None:
            return wait
        return min(wait, max(MAX_AWAY_WINDOWS * self._tokens.span, self.blocked_until - now))

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
                self._unpace(reservation.lane, charge.amount)
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
        """A 429: plan nothing before the server's retry-after (``unannounced_wait`` if it gave
        none).

        With a known quota the call was planned to fit, so unless the server's own remaining
        figures (``rate``) show room for it (``charge`` tokens and a request: a stray 429, a
        forced one, a server hiccup), the server saw our calls later than we sent them. The
        retry-after measures that skew: exactly when it has a fraction (``retry-after-ms``),
        only as an upper bound when it is whole seconds. The skew widens every window's guard,
        each by at most ``MAX_GUARD_FRACTION`` of its own length, and decays with time.
        """
        wait = retry_after_s if retry_after_s is not None else self.unannounced_wait(now)
        self.throttles += 1
        self.blocked_until = max(self.blocked_until, now + wait)
        if self.tpm is None or had_room(rate, charge):
            return
        self._guard.widen(retry_after_s, wait, now, self.model.window_s)
        self._apply_guard()

    def unannounced_wait(self, now: float) -> float:
        """How long to plan nothing after a 429 that names no retry-after.

        The server's token window is full by its own count, and the first moment it can have
        room that we know of is when the oldest charge we sent leaves the window the server is
        learned to keep (the guard included): 10 s windows free up sooner than 60 s ones. At
        least ``MIN_UNANNOUNCED_WAIT_S`` (a request window), at most half that window, and
        half of Azure's 10 s window for a deployment without a known quota."""
        if self._tokens is None:
            return TOKEN_WINDOW_S / 2
        self._tokens.prune(now)
        leaves = self._tokens.first_expiry()
        longest = self._tokens.window_s / 2
        if leaves is None:
            return longest
        return min(max(leaves - now, MIN_UNANNOUNCED_WAIT_S), longest)

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

        Then what the server has counted beyond our own charges is booked
        (``shared.llm.reconcile``), unless the inference still doubts the current model: a
        reading taken against the wrong window would be mistaken for someone else's traffic.
        """
        sent = reservation.sent_at if reservation.sent_at is not None else reservation.at
        if self.inference is None or self._tokens is None:
            return
        if usage is not None and reservation.record is not None:
            self.inference.answered(reservation.record, *usage)
            if self.model.charge == "usage":
                self._settle_usage(reservation, usage, now)
        if rate.remaining_tokens is not None:
            changed = self.inference.observe(rate.remaining_tokens, (sent, now), reservation.record)
            if changed is not None:
                self._adopt(changed, now)
        if not self._model_trusted():
            return
        if rate.remaining_tokens is not None:
            global_limit = self._token_limit(1.0)
            book_unknown_tokens(
                self.name,
                self._tokens,
                global_limit,
                rate.remaining_tokens,
                sent,
                now,
                tolerance=max(8.0, 0.01 * global_limit),
            )
        if self._requests and rate.remaining_requests is not None and not self.model.per_minute:
            book_unknown_requests(
                self.name,
                self._requests,
                self._request_limits(1.0),
                rate.remaining_requests,
                sent,
                now,
            )

    def _model_trusted(self) -> bool:
        assert self.inference is not None
        loss = self.inference.loss
        return loss[self.model] <= min(loss.values()) + 1e-9

    def _settle_usage(self, reservation: Reservation, usage: tuple[int, int], now: float) -> None:
        """A server that charges usage charged this call its actual tokens when it answered:
        the booking shrinks to them and counts from the answer (requests from the arrival),
        and the pace gives back what it had counted for the tokens not used."""
        token_windows = (self._tokens, self._lanes[reservation.lane][0])
        for window, charge in reservation.charges:
            if any(window is w for w in token_windows):
                unused = max(0.0, charge.amount - sum(usage))
                charge.amount -= unused
                charge.at = max(charge.at, now)
                if window is self._tokens:
                    self._unpace(reservation.lane, unused)

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
