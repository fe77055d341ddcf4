"""How instances share one deployment's quota: leased, demand-weighted shares in a shared ledger.

Every instance (worker process) that calls a deployment holds a lease in a ledger: its id, its
recent demand in tokens per minute, and an expiry. On each heartbeat (every few seconds) it renews
its lease, drops the expired ones and reads the live leases; every instance then computes the same
split of the deployment's TPM from the same rows (``allocate_shares``: max-min fair by demand, a
small floor for idle instances, the rest shared out) and limits itself to its share locally.

Why leases and not one shared bucket with an atomic take per call: a shared bucket costs one
conditional write per LLM call on one hot document. In Cosmos that is a few milliseconds and a few
RUs per call and, worse, etag contention that grows with the very concurrency the limiter exists to
serve; in SQLite it is a write lock per call across processes. Leases cost one write per instance
per heartbeat, whatever the call rate, and the local limiter keeps its exact window arithmetic.
What leases give up is instant reallocation: a share moves only on the next heartbeat, and a
crashed instance's share comes back after its lease expires (three heartbeats). The
``x-ratelimit-remaining-*`` headers cover the gap: the local limiter books whatever the server
counted beyond our share (``DeploymentQuota.observe``).

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
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shared.llm.clock import Clock, SystemClock
from shared.llm.limiter import QuotaLimiter
from shared.llm.quota_metrics import QuotaSnapshot

log = logging.getLogger(__name__)

IDLE_FLOOR = 0.1
"""An idle instance keeps this fraction of an equal share, so its first calls need not wait."""


class QuotaLedger(Protocol):
    """Leases of the instances that share a deployment."""

    async def heartbeat(
        self, deployment: str, instance_id: str, demand_tpm: float, *, now: float, ttl_s: float
    ) -> dict[str, float]:
        """Renew this instance's lease and return every live lease's demand (including ours)."""
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


def allocate_shares(demands: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Split ``capacity`` between instances by their ``demands``; the result sums to capacity.

    Every instance first gets a floor (a tenth of an equal share); the rest is water-filled:
    instances wanting less than an equal split of what is left get what they want, and the others
    split the remainder equally. Whatever nobody wants is spread evenly, so quota is never left
    idle by the split itself. Deterministic in its inputs, so every instance computes the same.
    """
    if not demands:
        return {}
    ids = sorted(demands)
    floor = capacity / len(ids) * IDLE_FLOOR
    shares = dict.fromkeys(ids, floor)
    left = capacity - floor * len(ids)
    wanting = {i: max(0.0, demands[i] - floor) for i in ids}
    active = [i for i in ids if wanting[i] > 0]
    while active and left > 1e-9:
        equal = left / len(active)
        satisfied = [i for i in active if wanting[i] <= equal]
        if not satisfied:
            for i in active:
                shares[i] += equal
            left = 0.0
            break
        for i in satisfied:
            shares[i] += wanting[i]
            left -= wanting[i]
        active = [i for i in active if i not in satisfied]
    if left > 1e-9:
        for i in ids:
            shares[i] += left / len(ids)
    return shares


def default_instance_id() -> str:
    """Unique per worker process: the Functions instance (or host name), the pid and a nonce."""
    host = os.environ.get("WEBSITE_INSTANCE_ID", "")[:16] or socket.gethostname()
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Demand:
    tokens: float = 0.0
    since: float = 0.0
    next_beat: float = -math.inf
    rate_tpm: float = 0.0


class ShareCoordinator:
    """Keeps this instance's share of every deployment it uses, from heartbeats in a ledger.

    The heartbeat runs inline, at most once per ``heartbeat_s`` per deployment, from the call path
    (``refresh``): no background task to start, stop or lose. Demand is the tokens this instance
    asked for (served or not) per minute, smoothed, so a starved instance claims more next time.
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

    def note_demand(self, deployment: str, tokens: int) -> None:
        """Record that a call wanted ``tokens`` from ``deployment``."""
        self._state(deployment).tokens += tokens

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
        if self._clock.monotonic() < state.next_beat:
            return
        lock = self._locks.setdefault(deployment, asyncio.Lock())
        async with lock:
            now = self._clock.monotonic()
            if now < state.next_beat:
                return
            elapsed = max(now - state.since, 1e-3)
            fresh = min(state.tokens / elapsed * 60.0, float(tpm))
            first = state.next_beat == -math.inf
            state.rate_tpm = fresh if first else 0.5 * state.rate_tpm + 0.5 * fresh
            state.tokens, state.since = 0.0, now
            state.next_beat = now + self._heartbeat_s
            try:
                demands = await self._ledger.heartbeat(
                    deployment,
                    self.instance_id,
                    state.rate_tpm,
                    now=self._clock.time(),
                    ttl_s=3 * self._heartbeat_s,
                )
            except Exception as exc:  # the ledger is an optimisation; calls must go on
                log.warning("quota ledger heartbeat for %s failed: %s", deployment, exc)
                return
            shares = allocate_shares(demands, float(tpm))
            share = shares.get(self.instance_id, float(tpm)) / tpm
            quota = self._limiter.quota(deployment)
            quota.set_share(min(1.0, max(share, 1e-3)))
            log.debug("deployment %s: %d instance(s), share %.3f", deployment, len(shares), share)
            await self._publish(deployment, quota.snapshot(self._clock.monotonic()))

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
