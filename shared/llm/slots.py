"""Picking and booking the deployment a model call goes to.

``SlotPicker.take`` walks the stage's deployments in order, skips those whose circuit is open,
and books the first whose quota can take the call before the deadline; when none can, it raises
the error that tells the pipeline when to try again (``RetryLater``) or that every circuit is open
(``CircuitOpen``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shared.domain.messages import Priority, Stage
from shared.errors import CircuitOpen, RetryLater
from shared.llm.accounting import CallSize
from shared.llm.breaker import Breakers
from shared.llm.clock import Clock
from shared.llm.lanes import current_lane
from shared.llm.ledger import MOVING_BEAT, ShareCoordinator
from shared.llm.limiter import DeploymentQuota, QuotaLimiter
from shared.llm.metrics import LLMMetrics
from shared.llm.reservation import Reservation


@dataclass
class Slot:
    """A deployment's quota booked for one call."""

    deployment: str
    reservation: Reservation
    wait_s: float
    waited_s: float = 0.0
    """Already waited unbooked (a batch call letting interactive calls go first)."""

    @property
    def quota_wait_s(self) -> float:
        """The whole wait for quota: unbooked before the slot, then until it."""
        return self.wait_s + self.waited_s


class SlotPicker:
    """Finds the first healthy deployment with room for a call, and books it."""

    def __init__(
        self,
        *,
        limiter: QuotaLimiter,
        breakers: Breakers,
        shares: ShareCoordinator | None,
        clock: Clock,
        metrics: LLMMetrics,
        wait_budget_s: float,
    ) -> None:
        self._limiter = limiter
        self._breakers = breakers
        self._shares = shares
        self._clock = clock
        self._metrics = metrics
        self._wait_budget_s = wait_budget_s

    async def take(
        self,
        stage: Stage,
        candidates: Sequence[str],
        size: CallSize,
        deadline: float,
        start_index: int,
    ) -> Slot:
        """Book the first deployment that is healthy and has quota before the deadline.

        A call may sleep unbooked until its slot and plan again (``DeploymentQuota.hold``): a
        batch call (``shared.llm.lanes``) above its floor, so interactive calls take the slots
        first; a large call for a while, so smaller ones fill room it cannot use
        (``shared.llm.packing``)."""
        lane = current_lane()
        order = [*candidates[start_index:], *candidates[:start_index]]
        quota_waits: list[tuple[float, str]] = []
        cooldowns: list[tuple[float, str]] = []
        for deployment in order:
            breaker = self._breakers.for_deployment(deployment)
            if not breaker.can_call():
                cooldowns.append((breaker.retry_in(), deployment))
                continue
            quota = self._limiter.quota(deployment)
            if self._shares is not None:
                # Demand in the tokens this deployment is learned to charge.
                self._shares.note_demand(deployment, math.ceil(quota.charge_of(size)), lane)
                await self._shares.refresh(deployment)
            started = self._clock.monotonic()
            at, now = await self._plan(quota, size, lane, deadline, started)
            while at > deadline and now < quota.share_grows_at <= deadline:
                # The share is small only until the others' charges leave: wait for it to be
                # looked at again, not for as long as the small share would take.
                await self._clock.sleep(quota.share_grows_at - now)
                if self._shares is not None:
                    await self._shares.refresh(deployment)
                at, now = await self._plan(quota, size, lane, deadline, self._clock.monotonic())
            if at > deadline:
                quota_waits.append((quota.wait_for(at, now), deployment))
                continue
            # No await since plan(): the slot is still free, and the probe is still ours.
            if not breaker.acquire():
                cooldowns.append((breaker.retry_in(), deployment))
                continue
            return Slot(
                deployment,
                quota.reserve(size, at, lane),
                max(0.0, at - now),
                waited_s=now - started,
            )
        raise self._no_slot(stage, size, quota_waits, cooldowns)

    async def wait(self, slot: Slot) -> None:
        """Sleep until the booked slot, renewing this instance's lease on the way when a
        heartbeat falls due: calls waiting for their slots are demand, and an instance whose
        calls all wait must not look to the others as one that has stopped calling
        (``shared.llm.ledger.QUIET_BEATS``). A heartbeat that grows the share books the
        waiting calls again, sooner (``DeploymentQuota.rebook_waiting``), so the wait looks
        at its slot every ``MOVING_BEAT`` of a heartbeat; ``slot.wait_s`` ends as the wait
        it took."""
        started = self._clock.monotonic()
        step = math.inf if self._shares is None else MOVING_BEAT * self._shares.heartbeat_s
        while (left := slot.reservation.at - self._clock.monotonic()) > 0:
            await self._clock.sleep(min(left, step))
            if self._shares is not None and self._clock.monotonic() < slot.reservation.at:
                await self._shares.refresh(slot.deployment)
        slot.wait_s = max(0.0, self._clock.monotonic() - started)

    async def _plan(
        self,
        quota: DeploymentQuota,
        size: CallSize,
        lane: Priority,
        deadline: float,
        now: float,
    ) -> tuple[float, float]:
        """When ``quota`` can take the call, sleeping unbooked while it holds it back; returns
        that time and the time it was last planned at."""
        at = quota.plan(size, now, lane)
        waiter = object()
        try:
            while at <= deadline:
                wake = quota.hold(waiter, size, lane, at, now)
                if wake is None:
                    break
                await self._clock.sleep(wake - now)
                now = self._clock.monotonic()
                at = quota.plan(size, now, lane)
        finally:
            quota.unhold(waiter, self._clock.monotonic())
        return at, now

    def _no_slot(
        self,
        stage: Stage,
        size: CallSize,
        quota_waits: list[tuple[float, str]],
        cooldowns: list[tuple[float, str]],
    ) -> RetryLater | CircuitOpen:
        """The error for a call no deployment can take: the quota that frees first, as a
        ``RetryLater``, else the circuit that closes first."""
        if quota_waits:
            wait, deployment = min(quota_waits)
            now = self._clock.monotonic()
            back = self._limiter.quota(deployment).defer(size, now + wait) - now
            return retry_later(
                self._metrics,
                stage,
                back,
                f"quota of {deployment} is booked for the next {wait:.1f}s",
            )
        retry_in, deployment = min(cooldowns)
        reason = f"every deployment for {stage.value} has an open circuit"
        if retry_in > self._wait_budget_s:
            return retry_later(self._metrics, stage, retry_in, reason)
        return CircuitOpen(deployment, retry_in)


def retry_later(metrics: LLMMetrics, stage: Stage, delay_s: float, reason: str) -> RetryLater:
    """A ``RetryLater`` for ``delay_s`` rounded up to a tenth, counted as a rescheduled call."""
    delay = max(0.0, math.ceil(delay_s * 10) / 10)
    metrics.rescheduled(stage=stage.value, delay_s=delay, reason=reason)
    return RetryLater(delay, reason)
