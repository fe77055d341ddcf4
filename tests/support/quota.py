"""Helpers for tests of how instances share a deployment's quota (``shared.llm.ledger``)."""

from __future__ import annotations

import asyncio

from shared.llm.breaker import BreakerPolicy, Breakers
from shared.llm.ledger import Lease, QuotaLedger, ShareCoordinator
from shared.llm.limiter import QuotaLimiter
from shared.llm.metrics import CountingMetrics
from shared.llm.slots import SlotPicker
from tests.support.clock import ManualClock


def slot_picker(
    limiter: QuotaLimiter, shares: ShareCoordinator | None, clock: ManualClock
) -> SlotPicker:
    """The slot picker a guarded model builds, with a 10 s wait budget."""
    return SlotPicker(
        limiter=limiter,
        breakers=Breakers(BreakerPolicy(3, 10.0, 0.5, 30.0, 6), clock=clock),
        shares=shares,
        clock=clock,
        metrics=CountingMetrics(),
        wait_budget_s=10.0,
    )


class GatedLedger:
    """A real ledger behind a gate: heartbeats wait until the test opens it (a slow ledger;
    open from the start for none), and every lease written and when is kept."""

    def __init__(self, ledger: QuotaLedger, *, open_: bool = False) -> None:
        self.ledger = ledger
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.written: list[Lease] = []
        self.at: list[float] = []
        """The ``now`` of each heartbeat (ledger time)."""

    async def heartbeat(
        self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
    ) -> dict[str, Lease]:
        self.written.append(lease)
        self.at.append(now)
        await self.gate.wait()
        return await self.ledger.heartbeat(deployment, instance_id, lease, now=now, ttl_s=ttl_s)

    async def leave(self, deployment: str, instance_id: str) -> None:
        await self.ledger.leave(deployment, instance_id)

    async def close(self) -> None:
        await self.ledger.close()
