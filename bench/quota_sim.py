"""One ``bench.quota`` cell of the guarded client, replayed in simulated time.

The capacity model's queue (``bench.capacity``) and the admission study
(``bench.packing_sim``) both need what the guarded client's admission rules do to closed-loop
users in front of a server's windows, without an event loop, HTTP or a wall clock:

* every user starts at 0 and runs ``bench.quota_load.CALLS`` conversations back to back, as
  ``bench.quota`` starts its users; with ``think_s`` a user thinks for a time drawn uniformly
  from [0, 2 x ``think_s``] before each conversation, and ``batch_users`` more run in the
  batch lane with no think time, as ``bench.quota --lanes`` runs them;
* each call plans through ``shared.llm.limiter.DeploymentQuota`` (the object the guarded client
  books in: its windows, guard, size-aware hold and learned accounting), waits unbooked while
  ``hold`` says, and books and sends at its planned time;
* a call that cannot be sent within the wait budget is given back as the slot picker does
  (``wait_for``, ``defer`` and ``retry_later``) and re-sent when the pipeline's
  ``decide_reschedule`` says, with its jitter, under the bench's own guarded settings
  (``guarded_settings``: budgets); past the total budget its conversation fails;
* the server is the simulator's own rate limiter (``devhost.simulator.ratelimit``) under the
  cell's accounting profile; an answer arrives ``latency_s`` after admission and carries the
  server's remaining figures then, as the simulator's headers do; a 429 carries its
  retry-after in whole seconds unless the profile sends milliseconds.

What comes back is a ``bench.quota_load.Tally`` in simulated seconds (one per lane from
``simulate_lanes``), so ``bench.quota``'s own ``Row`` measures it exactly as it measures a real
cell.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from bench.quota_load import (
    CALLS,
    LATENCY_MS,
    TOTAL_BUDGET_S,
    Plan,
    Tally,
    deployment_rpm,
    guarded_settings,
)
from devhost.simulator.accounting import AccountingProfile
from devhost.simulator.ratelimit import Decision, DeploymentLimiter
from shared.domain.messages import Priority
from shared.llm.accounting import CallSize
from shared.llm.budget import decide_reschedule
from shared.llm.endpoint import RateLimitInfo
from shared.llm.lanes import BATCH, INTERACTIVE, LANES
from shared.llm.limiter import DeploymentQuota, Reservation
from shared.llm.metrics import CountingMetrics
from shared.llm.slots import retry_later

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Simulated second 0 as wall time, for ``decide_reschedule``."""


@dataclass(frozen=True)
class CellSpec:
    profile: AccountingProfile
    tpm: int
    users: int
    warmup_s: float
    measure_s: float
    size_aware: bool = True
    seed: int = 1
    total_budget_s: float = TOTAL_BUDGET_S
    think_s: float = 0.0
    """The interactive users' mean think time before each conversation."""
    batch_users: int = 0
    """Closed-loop users in the batch lane beside them (no think time)."""
    fault_at: float | None = None
    """The first call sent at or after this second is answered with a forced 429, as the
    simulator answers one sent with ``x-sim-fault: 429`` (``bench.quota --stray``)."""
    size_spread: float = 0.0
    """Each call's prompt and ``max_tokens`` scaled by one factor drawn uniformly from
    [1 - spread, 1 + spread], as real prompts of one stage vary (0: the bench's sizes)."""


@dataclass(eq=False)  # a waiting-room key: by identity
class _Call:
    user: int
    step: int
    begun: float  # when its conversation began
    lane: Priority = INTERACTIVE
    waited: float = 0.0  # rescheduled by so far (the envelope's figure)
    planned_since: float | None = None  # when this attempt began waiting for its slot
    booking: Reservation | None = None
    kept: list[tuple[float, int]] | None = None  # its conversation's answered calls so far
    size: CallSize | None = None  # drawn when first asked for (``CellSpec.size_spread``)


def spread_size(prompt: int, max_tokens: int, spread: float, rng: random.Random) -> tuple[int, int]:
    """``prompt`` and ``max_tokens`` scaled by one factor drawn uniformly from
    [1 - ``spread``, 1 + ``spread``] (unchanged, and nothing drawn, for a spread of 0)."""
    if spread <= 0:
        return prompt, max_tokens
    factor = rng.uniform(1.0 - spread, 1.0 + spread)
    return round(prompt * factor), max(1, round(max_tokens * factor))


def simulate(spec: CellSpec) -> Tally:
    """Run the cell; returns what its (interactive) users did, measured over its window."""
    return _Cell(spec).run()[INTERACTIVE]


def simulate_lanes(spec: CellSpec) -> dict[Priority, Tally]:
    """Run the cell; returns what the users of each lane did, measured over its window."""
    return _Cell(spec).run()


class _Cell:
    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec
        self.now = 0.0
        self.server = DeploymentLimiter(
            tpm=spec.tpm,
            rpm=deployment_rpm(spec.tpm),
            clock=lambda: self.now,
            profile=spec.profile,
        )
        self.quota = DeploymentQuota("d", spec.tpm)
        plan = Plan(spec.tpm, (spec.users,), spec.warmup_s, spec.measure_s)
        self.settings = replace(
            guarded_settings("http://replay", plan, "d"), total_budget_s=spec.total_budget_s
        )
        """The bench's guarded client settings: its wait and total budgets."""
        self.metrics = CountingMetrics()
        self.rng = random.Random(spec.seed)
        self.sizes = random.Random(spec.seed + 1)  # apart, so a spread of 0 changes nothing
        end = spec.warmup_s + spec.measure_s
        self.tallies = {lane: Tally((spec.warmup_s, end), spec.profile) for lane in LANES}
        self.tally = self.tallies[INTERACTIVE]  # the lane of the event being handled
        self.end = end
        self.events: list[tuple[float, int, str, _Call]] = []
        self.order = 0
        self.latency_s = LATENCY_MS / 1000.0
        self.faulted = False

    def push(self, at: float, kind: str, call: _Call) -> None:
        self.order += 1
        heapq.heappush(self.events, (at, self.order, kind, call))

    def run(self) -> dict[Priority, Tally]:
        for user in range(self.spec.users):
            self._next_conversation(_Call(user, 0, 0.0))
        for user in range(self.spec.users, self.spec.users + self.spec.batch_users):
            self._next_conversation(_Call(user, 0, 0.0, BATCH))
        while self.events:
            self.now, _, kind, call = heapq.heappop(self.events)
            if self.now > self.end:
                break
            self.tally = self.tallies[call.lane]
            getattr(self, f"_{kind}")(call)
        return self.tallies

    def _size(self, call: _Call) -> CallSize:
        if call.size is None:
            _, prompt, max_tokens = CALLS[call.step]
            spread = spread_size(prompt, max_tokens, self.spec.size_spread, self.sizes)
            call.size = CallSize(*spread)
        return call.size

    def _ready(self, call: _Call) -> None:
        quota, size, now = self.quota, self._size(call), self.now
        if call.planned_since is None:
            call.planned_since = now
        at = quota.plan(size, now, call.lane)
        wake = None
        if at <= call.planned_since + self.settings.wait_budget_s and self.spec.size_aware:
            wake = quota.hold(call, size, call.lane, at, now)
        if at > call.planned_since + self.settings.wait_budget_s:
            quota.unhold(call, now)
            self._give_back(call, quota.wait_for(at, now), size)
        elif wake is not None:
            self.push(wake, "ready", call)
        else:
            quota.unhold(call, now)
            call.booking = quota.reserve(size, at, call.lane)
            self.push(at, "send", call)

    def _give_back(self, call: _Call, wait: float, size: CallSize) -> None:
        """``RetryLater`` as the slot picker raises it, re-sent when the pipeline's
        ``decide_reschedule`` says (both called as they are, in simulated seconds)."""
        back = self.quota.defer(size, self.now + wait) - self.now
        stage = CALLS[call.step][0]
        delay = retry_later(self.metrics, stage, back, "replayed").delay_s
        now = EPOCH + timedelta(seconds=self.now)
        at = decide_reschedule(call.waited, now, delay, self.settings, rng=self.rng)
        call.planned_since = None
        if at is None:
            for made in call.kept or ():  # a failed conversation's calls were no use
                self.tally.kept.remove(made)
                if self.tally.in_window(made[0] + self.latency_s):
                    self.tally.useful_tokens -= made[1]
                    self.tally.useful_calls -= 1
            if self.tally.in_window(self.now):
                self.tally.conversations_failed += 1
            self._next_conversation(call)
            return
        delay = (at - now).total_seconds()
        call.waited += delay
        self.push(self.now + delay, "ready", call)

    def _send(self, call: _Call) -> None:
        assert call.booking is not None
        size = self._size(call)
        charge = self.spec.profile.charge_for(size.prompt, size.max_tokens)
        self.quota.mark_sent(call.booking, self.now)
        decision = self._forced(charge) or self.server.try_acquire(charge)
        if self.tally.in_window(self.now):
            self.tally.http_calls += 1
            self.tally.throttled += not decision.admitted
        if not decision.admitted:
            retry_s = decision.retry_after_ms / 1000.0
            if not self.spec.profile.retry_after_ms:
                retry_s = float(max(1, math.ceil(retry_s)))
            rate = RateLimitInfo(decision.remaining_tokens, decision.remaining_requests, retry_s)
            self.quota.refund(call.booking)
            self.quota.throttle(retry_s, self.now, rate=rate, charge=charge)
            call.booking, call.planned_since = None, None
            self.push(self.now, "ready", call)
            return
        self.tally.kept.append((self.now, charge))
        call.kept = [*(call.kept or ()), (self.now, charge)]
        self.push(self.now + self.latency_s, "answer", call)

    def _forced(self, charge: int) -> Decision | None:
        """The forced 429 of ``fault_at``, once, as the simulator answers it
        (``DeploymentLimiter.forced_refusal``)."""
        if self.faulted or self.spec.fault_at is None or self.now < self.spec.fault_at:
            return None
        self.faulted = True
        return self.server.forced_refusal(charge)

    def _answer(self, call: _Call) -> None:
        assert call.booking is not None
        size = self._size(call)
        prompt, max_tokens = size.prompt, size.max_tokens
        seen = self.server.peek()
        rate = RateLimitInfo(seen.remaining_tokens, seen.remaining_requests, None)
        self.quota.observe(call.booking, rate, self.now, usage=(prompt, max_tokens // 2))
        charge = self.spec.profile.charge_for(prompt, max_tokens)
        self.tally.answers.append((self.now, charge))
        if self.tally.in_window(self.now):
            self.tally.useful_tokens += charge
            self.tally.useful_calls += 1
        if call.step + 1 < len(CALLS):
            following = _Call(call.user, call.step + 1, call.begun, call.lane, kept=call.kept)
            self.push(self.now, "ready", following)
            return
        if self.tally.in_window(self.now):
            self.tally.conversations_done += 1
            self.tally.latencies.append(self.now - call.begun)
        self._next_conversation(call)

    def _next_conversation(self, last: _Call) -> None:
        """The user of ``last`` begins its next conversation, after its think time."""
        think = self.spec.think_s if last.lane == INTERACTIVE else 0.0
        at = self.now + (self.rng.uniform(0.0, 2.0 * think) if think > 0 else 0.0)
        self.push(at, "ready", _Call(last.user, 0, at, last.lane))
