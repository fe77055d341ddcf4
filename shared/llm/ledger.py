"""How instances share one deployment's quota: leased, demand-weighted shares in a shared ledger.

Every instance (worker process) that calls a deployment holds a lease in a ledger: its id, its
recent demand in tokens per minute, and an expiry. On each heartbeat (every few seconds) it renews
its lease, drops the expired ones and reads the live leases; every instance then computes the same
split of the deployment's TPM from the same rows (``allocate_shares``: max-min fair by demand, a
small floor for idle instances, what nobody asked for shared out by demand) and limits itself to
its share locally.

Why leases and not one shared bucket with an atomic take per call: a shared bucket costs one
conditional write per LLM call on one hot document. In Cosmos that is a few milliseconds and a few
RUs per call and, worse, etag contention that grows with the very concurrency the limiter exists to
serve; in SQLite it is a write lock per call across processes. Leases cost one write per instance
per heartbeat, whatever the call rate, and the local limiter keeps its exact window arithmetic.
What leases give up is instant reallocation: a share moves only on the next heartbeat. So an
instance beats sooner (``MOVING_BEAT``) while shares are moving: while it is alone (a newcomer
must be seen at once), when the set of calling instances has changed, while it is held short,
and just after its share shrank. An instance renews its lease only when it calls; one that has
missed its heartbeats (``QUIET_BEATS``) has stopped calling or crashed, and is counted as
wanting nothing, its charges leaving the window, before its lease lapses (three heartbeats).
The ``x-ratelimit-remaining-*`` headers cover the rest: the local limiter books whatever the server
counted beyond our share (``DeploymentQuota.observe``).

Lanes and hand-over. A lease carries the demand per lane (``shared.llm.lanes``), so the split
serves interactive demand on every instance before batch demand on any (``allocate_lane_shares``;
batch keeps ``MIN_BATCH_SHARE`` of the deployment while it has work). It also carries what the
instance has charged in the current window. An instance that shrinks still has those charges in
the server's window until they leave, so it keeps its new split (its own window holds it to
that) and the others grow only into what nobody holds (``hand_over``): a share moves as its old
holder's charges leave, and the window is not spent twice for it. An instance whose share grows
books its waiting calls again at the new share (``DeploymentQuota.rebook_waiting``), so they do
not keep the old share's pace. What this does not cover:
until its next heartbeat an instance may still spend up to its previous share, and splits read
at different heartbeats, from demands that moved in between, can add up to a little more than
the deployment. So a newcomer's first heartbeats, or a share moving over several heartbeats,
can overlap the old holder by what it had not yet charged: a call or two of a 10 s window in
``test_llm_handover``, three for an instance calling again while another is still growing into
the share it left (its first heartbeat reads what the other has charged, not what it may
spend), and 429s of 0.4 % of calls in ``bench.handover_sim``; the headers and the retry layer
catch the rest. (Publishing each instance's claim in its lease, so nobody grants
itself what another may still spend, closes the overlap but holds a newcomer back until every
other instance has beaten again.)

Two adapters implement the Protocol:
* ``SqliteQuotaLedger`` (``shared.adapters.local.quota_ledger``): devhost, one file shared by
  all worker processes, one UPSERT + SELECT per heartbeat in a transaction.
* ``StoreQuotaLedger`` (``shared.adapters.document_quota``): Azure, a document per deployment
  (``lease:{deployment}``) in the ``quota`` container of the ``DocumentStore`` port (Cosmos DB,
  pk ``/id``), read-modify-replace with etag conditions and retries on a lost race. Redis would
  work the same way (a hash per deployment with ``WATCH``/``MULTI``); Cosmos is used because
  the app already has it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from shared.domain.messages import Priority
from shared.llm.clock import Clock, SystemClock
from shared.llm.lanes import BATCH, INTERACTIVE, LANES, MIN_BATCH_SHARE
from shared.llm.limiter import QuotaLimiter
from shared.llm.quota_metrics import QuotaSnapshot

log = logging.getLogger(__name__)

IDLE_FLOOR = 0.1
"""An idle instance keeps this fraction of an equal share, so its first calls need not wait."""
MIN_SHARE = 1e-3
"""The least share a limiter is given (a limit of zero cannot be planned against)."""
STATUS_KEEP_S = 300.0
"""A published snapshot older than this is an instance gone without leaving: not shown."""
QUIET_BEATS = 1.5
"""A lease not renewed for this many heartbeats belongs to an instance that has stopped calling
(an instance renews on its calls; one with calls waiting renews every heartbeat): it is counted
as wanting and holding nothing, before its lease lapses."""
MOVING_BEAT = 0.2
"""The next heartbeat comes after this fraction of the interval while an instance is alone on
the deployment (it spends all of it, so a newcomer must be seen within a second, not five), the
set of calling instances has just changed (one joined, left, went quiet or called again: the
others' leases were written before they saw it), or its share is held short for a hand-over (it
grows as soon as the others' leases show room), or its share has just shrunk (until its next
heartbeat it may spend up to the share it had, which the others' splits no longer leave it;
beating sooner keeps that overlap to a second's calls)."""
DEMAND_SMOOTHING_S = 20.0
"""The time constant of the demand an instance publishes: a reading covering ``t`` seconds
moves it ``1 - exp(-t / DEMAND_SMOOTHING_S)`` of the way to what was asked for in them (two
Azure token windows). Calls sent away (``RetryLater``) come back in bunches, so what a busy
instance asks for swings from one heartbeat to the next while the backlog behind it does not;
splits that followed those swings moved shares back and forth, and every move leaves room idle
while the shrunk instance's charges leave the window. Calls waiting for a slot are added
unsmoothed (``_heartbeat``), and an instance that stops calling is read as quiet
(``QUIET_BEATS``) whatever its demand says."""
HELD_SHORT = 0.95
"""A share below this fraction of its split is held short for a hand-over (the others' charges
still in the window): calls wait for the next heartbeat rather than plan at it."""


@dataclass(frozen=True)
class Lease:
    """One instance's row in the ledger, in tokens per minute of the deployment: its recent
    demand per lane, and what it has charged in the current window (``used``, as a rate)."""

    interactive: float = 0.0
    batch: float = 0.0
    used: float = 0.0
    renewed: float = math.inf
    """When its instance last renewed it (the heartbeat's ``now``, as the ledger read it
    back; ignored on write). Instances need not share a heartbeat interval to read it."""

    @property
    def demand(self) -> float:
        return self.interactive + self.batch


class QuotaLedger(Protocol):
    """Leases of the instances that share a deployment."""

    async def heartbeat(
        self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
    ) -> dict[str, Lease]:
        """Renew this instance's lease and return every live lease (including ours), as one
        step that no other heartbeat of the deployment interleaves with."""
        ...

    async def leave(self, deployment: str, instance_id: str) -> None:
        """Drop this instance's lease (on shutdown), handing its share back at once."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class QuotaStatusBoard(Protocol):
    """A ledger that also keeps each instance's latest limiter snapshot, for status displays."""

    async def publish(
        self, deployment: str, instance_id: str, snapshot: Mapping[str, Any], *, now: float
    ) -> None: ...


def status_entry(
    snapshot: Mapping[str, Any], instance: object, *, at: float, now: float
) -> dict[str, Any]:
    """A published snapshot as a status display shows it: its values plus ``instance`` and
    ``age_s`` (what every ``QuotaStatusBoard`` reader returns per instance)."""
    return {**snapshot, "instance": instance, "age_s": round(max(0.0, now - at), 1)}


def allocate_shares(demands: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Split ``capacity`` between instances by their ``demands``; the result sums to capacity.

    Every instance first gets a floor (a tenth of an equal share); the rest is water-filled:
    instances wanting less than an equal split of what is left get what they want, and the others
    split the remainder equally. Whatever nobody wants goes out in proportion to demand (evenly
    if nobody wants anything), so quota is never left idle by the split itself. Deterministic in
    its inputs, so every instance computes the same.
    """
    return allocate_lane_shares({i: Lease(interactive=d) for i, d in demands.items()}, capacity)


def allocate_lane_shares(leases: Mapping[str, Lease], capacity: float) -> dict[str, float]:
    """``allocate_shares`` by lane: interactive demand on every instance is served before batch
    demand on any, except that batch, while some instance has it, keeps ``MIN_BATCH_SHARE``
    of the capacity (or what it wants, if less): the lanes of one limiter, across instances."""
    if not leases:
        return {}
    ids = sorted(leases)
    floor = capacity / len(ids) * IDLE_FLOOR
    shares = dict.fromkeys(ids, floor)
    left = capacity - floor * len(ids)
    interactive = {i: max(0.0, leases[i].interactive - floor) for i in ids}
    batch = {i: max(0.0, leases[i].demand - floor) - interactive[i] for i in ids}
    batch_keeps = min(sum(batch.values()), MIN_BATCH_SHARE * capacity, left)
    # Interactive first, short of batch's floor; then batch; then interactive's rest.
    served = _water_fill(interactive, left - batch_keeps)
    unmet = {i: interactive[i] - served[i] for i in ids}
    for given in (served, _water_fill(batch, left - sum(served.values()))):
        for i, value in given.items():
            shares[i] += value
            left -= value
    for i, value in _water_fill(unmet, left).items():
        shares[i] += value
        left -= value
    if left > 1e-9:
        # What nobody asked for goes where demand is (a busy instance's demand follows the
        # share it was given, so it likely wants more); evenly if nobody wants anything.
        wanted = {i: leases[i].demand for i in ids}
        total = sum(wanted.values())
        for i in ids:
            shares[i] += left * (wanted[i] / total if total > 0 else 1.0 / len(ids))
    return shares


def hand_over(
    leases: Mapping[str, Lease], splits: Mapping[str, float], capacity: float
) -> dict[str, float]:
    """What each instance may spend now, given its ``splits`` (``allocate_lane_shares`` of the
    same ``leases``) and what each still has charged in the window (``Lease.used``), so that
    the window is never spent twice.

    An instance still holding more than its split (it shrank) keeps its split: its own window
    holds its old charges and admits nothing new until they fall below the split. The others
    grow from what they hold towards their splits only into the room nobody holds (capacity
    less everyone's charges), in proportion to how far each is from its split; as the shrunk
    instances' charges leave, that room opens and the next heartbeats hand it over."""
    grants: dict[str, float] = {}
    growth: dict[str, float] = {}
    for i, split in splits.items():
        held = leases[i].used
        if held >= split:
            grants[i] = split
        else:
            grants[i] = held
            growth[i] = split - held
    room = capacity - sum(min(lease.used, capacity) for lease in leases.values())
    wanted = sum(growth.values())
    scale = min(1.0, max(0.0, room) / wanted) if wanted > 0 else 0.0
    for i, more in growth.items():
        grants[i] += more * scale
    return grants


def _water_fill(wanting: Mapping[str, float], amount: float) -> dict[str, float]:
    """Share ``amount`` out: who wants less than an equal split gets it, the rest split what
    is left equally. Never more than wanted in all."""
    given = dict.fromkeys(wanting, 0.0)
    active = sorted(i for i, w in wanting.items() if w > 0)
    left = max(0.0, amount)
    while active and left > 1e-9:
        equal = left / len(active)
        satisfied = [i for i in active if wanting[i] - given[i] <= equal]
        if not satisfied:
            for i in active:
                given[i] += equal
            break
        for i in satisfied:
            left -= wanting[i] - given[i]
            given[i] = wanting[i]
        active = [i for i in active if i not in satisfied]
    return given


def default_instance_id() -> str:
    """Unique per worker process: the Functions instance (or host name), the pid and a nonce."""
    host = os.environ.get("WEBSITE_INSTANCE_ID", "")[:16] or socket.gethostname()
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Demand:
    tokens: dict[Priority, float] = field(default_factory=lambda: dict.fromkeys(LANES, 0.0))
    since: float = 0.0
    next_beat: float = -math.inf
    rate_tpm: dict[Priority, float] = field(default_factory=lambda: dict.fromkeys(LANES, 0.0))
    moving: bool = False
    """Whether the next heartbeat comes early (``MOVING_BEAT``): this instance was alone on the
    deployment, or the set of calling instances changed, at the last one."""
    seen: set[str] = field(default_factory=set)
    """The instances the last heartbeat saw calling (a quiet lease is not counted)."""
    beaten: bool = False
    """Whether a heartbeat has set this instance's share (before it, the limiter's share is
    its starting one, all of the deployment)."""
    published_at: float = -math.inf
    """When the last status snapshot was written: at most one per heartbeat interval, however
    often the heartbeats come."""


class ShareCoordinator:
    """Keeps this instance's share of every deployment it uses, from heartbeats in a ledger.

    The heartbeat runs inline, at most once per ``heartbeat_s`` per deployment, from the call path
    (``refresh``): no background task to start, stop or lose. Demand is the tokens this instance
    asked for (served or not) per minute and lane, smoothed, so a starved instance claims more
    next time.
    """

    def __init__(
        self,
        ledger: QuotaLedger,
        limiter: QuotaLimiter,
        *,
        instance_id: str | None = None,
        heartbeat_s: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger
        self._limiter = limiter
        self.instance_id = instance_id or default_instance_id()
        self._heartbeat_s = heartbeat_s
        self._clock = clock or SystemClock()
        self._demand: dict[str, _Demand] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def heartbeat_s(self) -> float:
        """How often this instance renews its lease while it calls."""
        return self._heartbeat_s

    def note_demand(self, deployment: str, tokens: int, lane: Priority = INTERACTIVE) -> None:
        """Record that a call in ``lane`` wanted ``tokens`` from ``deployment``."""
        self._state(deployment).tokens[lane] += tokens

    def _state(self, deployment: str) -> _Demand:
        state = self._demand.get(deployment)
        if state is None:
            state = _Demand(since=self._clock.monotonic())
            self._demand[deployment] = state
        return state

    async def refresh(self, deployment: str) -> None:
        """Heartbeat and recompute the share if one is due; keep the old share on ledger errors."""
        tpm = self._limiter.tpm(deployment)
        if tpm is None:
            return
        state = self._state(deployment)
        if state.beaten and self._clock.monotonic() < state.next_beat:
            return
        # A call that comes while the first heartbeat is under way waits for it, rather than
        # plan at the limiter's starting share.
        lock = self._locks.setdefault(deployment, asyncio.Lock())
        async with lock:
            now = self._clock.monotonic()
            if now < state.next_beat:
                return
            self._measure(state, now, float(tpm))
            state.next_beat = now + self._heartbeat_s
            quota = self._limiter.quota(deployment)
            try:
                granted, split = await self._heartbeat(deployment, state, float(tpm))
            except Exception as exc:  # the ledger is an optimisation; calls must go on
                log.warning("quota ledger heartbeat for %s failed: %s", deployment, exc)
                return
            state.beaten = True
            held_short = granted < HELD_SHORT * split
            shrinking = granted < HELD_SHORT * quota.share * tpm
            if state.moving or held_short or shrinking:
                state.next_beat = now + MOVING_BEAT * self._heartbeat_s
            before = quota.share
            quota.set_share(min(1.0, max(granted / tpm, MIN_SHARE)))
            if quota.share > before:
                quota.rebook_waiting(now)
            # Held short of its split for a hand-over: the share is looked at again next beat.
            quota.share_grows_at = state.next_beat if held_short else -math.inf
            if granted < MIN_SHARE * tpm:
                # Nothing is ours until the others' charges leave: send nothing before the
                # next heartbeat (a share too small for one call would still admit one).
                quota.blocked_until = max(quota.blocked_until, state.next_beat)
            log.debug("deployment %s: share %.3f", deployment, quota.share)
            if now - state.published_at >= self._heartbeat_s:
                state.published_at = now
                await self._publish(deployment, quota.snapshot(self._clock.monotonic()))

    def _measure(self, state: _Demand, now: float, tpm: float) -> None:
        """Turn the tokens asked for since the last heartbeat into smoothed rates per lane.

        The first reading covers at least one heartbeat interval: a newcomer's first calls,
        asked for within milliseconds, would otherwise read as a rate of the whole deployment
        and take the others' splits. After it, each reading weighs the time it covers
        (``DEMAND_SMOOTHING_S``): an early heartbeat (``MOVING_BEAT``) moves demand a fifth as
        far as a full one, so shares that are already moving do not also chase one heartbeat's
        bunch of returning calls."""
        elapsed = max(now - state.since, 1e-3)
        first = not state.beaten
        span = max(elapsed, self._heartbeat_s) if first else elapsed
        weight = 1.0 if first else -math.expm1(-elapsed / DEMAND_SMOOTHING_S)
        for name in LANES:
            fresh = min(state.tokens[name] / span * 60.0, tpm)
            state.rate_tpm[name] += weight * (fresh - state.rate_tpm[name])
            state.tokens[name] = 0.0
        state.since = now

    async def _heartbeat(self, deployment: str, state: _Demand, tpm: float) -> tuple[float, float]:
        """Renew the lease and return the tokens per minute this instance may now use, and its
        split: the split (``allocate_lane_shares``), less what other instances still have
        charged in the window beyond their own splits (an instance that shrank holds its
        charges until they leave; taking that part of the split at once would spend the window
        twice)."""
        quota = self._limiter.quota(deployment)
        now = self._clock.monotonic()
        used = quota.used_share(now) * tpm
        # Demand is what was asked for, plus what waits for a slot: an instance whose calls
        # queue wants more than it was given, one whose calls go at once does not (asked-for
        # alone follows the share it got, and would leave the split where it is).
        waiting = quota.waiting_demand(now)
        lease = Lease(
            min(tpm, state.rate_tpm[INTERACTIVE] + waiting[INTERACTIVE]),
            min(tpm, state.rate_tpm[BATCH] + waiting[BATCH]),
            used,
        )
        wall = self._clock.time()
        leases = await self._ledger.heartbeat(
            deployment, self.instance_id, lease, now=wall, ttl_s=3 * self._heartbeat_s
        )
        calling = {i for i, row in leases.items() if not self._is_quiet(row, wall)}
        leases = {i: self._quiet(row, wall, quota.model.window_s) for i, row in leases.items()}
        shares = allocate_lane_shares(leases, tpm)
        log.debug("deployment %s: %d instance(s)", deployment, len(leases))
        split = shares.get(self.instance_id, tpm)
        # Alone, it holds the whole deployment: a newcomer must be seen soon. An instance new,
        # gone, gone quiet or calling again: the shares are moving, read the leases again soon.
        state.moving = len(leases) == 1 or calling != state.seen
        state.seen = calling
        return hand_over(leases, shares, tpm).get(self.instance_id, split), split

    def _is_quiet(self, row: Lease, wall: float) -> bool:
        """Whether ``row`` has gone ``QUIET_BEATS`` heartbeats without being renewed."""
        return wall - row.renewed >= QUIET_BEATS * self._heartbeat_s

    def _quiet(self, row: Lease, wall: float, window_s: float) -> Lease:
        """A lease as the split counts it: one not renewed for ``QUIET_BEATS`` heartbeats is an
        instance that has stopped calling (or is gone without leaving). It wants nothing, and
        what it had charged leaves the window evenly from its last renewal on."""
        if not self._is_quiet(row, wall):
            return row
        left = max(0.0, 1.0 - (wall - row.renewed) / window_s)
        return Lease(used=row.used * left, renewed=row.renewed)

    async def _publish(self, deployment: str, snapshot: QuotaSnapshot | None) -> None:
        """Leave the limiter's state where a status display finds it, if the ledger keeps it."""
        if snapshot is None or not isinstance(self._ledger, QuotaStatusBoard):
            return
        try:
            await self._ledger.publish(
                deployment, self.instance_id, snapshot.to_dict(), now=self._clock.time()
            )
        except Exception as exc:  # a status display must never fail a call
            log.warning("quota status for %s not published: %s", deployment, exc)

    async def close(self) -> None:
        """Hand our shares back and close the ledger."""
        for deployment in list(self._demand):
            try:
                await self._ledger.leave(deployment, self.instance_id)
            except Exception as exc:
                log.warning("could not leave quota ledger for %s: %s", deployment, exc)
        await self._ledger.close()
