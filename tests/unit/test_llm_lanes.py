"""Priority lanes in one deployment's limiter, in simulated time against the simulator's windows.

Interactive users and batch workers run closed loops on one deployment. A batch call books only
a slot it can use at once, otherwise it waits unbooked and plans again (what the guarded client
does for the batch lane); an interactive call books the earliest slot. A call whose slot is
further away than the wait budget comes back when ``defer`` says, as a re-sent message would.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.stats import percentile
from devhost.simulator.accounting import AZURE, MAXTOKENS_MINUTE, AccountingProfile
from devhost.simulator.ratelimit import DeploymentLimiter
from shared.domain.messages import Priority
from shared.llm.accounting import CallSize
from shared.llm.endpoint import RateLimitInfo
from shared.llm.lanes import (
    BATCH,
    BATCH_BOOK_AHEAD_S,
    INTERACTIVE,
    MIN_BATCH_SHARE,
    current_lane,
    lane,
)
from shared.llm.limiter import DeploymentQuota

CALLS = ((150, 60), (200, 150), (180, 40))
LATENCY_S = 0.3
WAIT_BUDGET_S = 10.0  # beyond it the guarded client sends the message away (RetryLater)


@dataclass
class Lanes:
    waits: dict[Priority, list[float]] = field(default_factory=lambda: {INTERACTIVE: [], BATCH: []})
    tokens: dict[Priority, int] = field(default_factory=lambda: {INTERACTIVE: 0, BATCH: 0})
    refused: int = 0


def run_lanes(
    profile: AccountingProfile,
    *,
    tpm: int,
    interactive: int,
    batch: int,
    duration_s: float,
    measure_from: float,
    interactive_think_s: float = 0.0,
    seed: int = 5,
) -> Lanes:
    clock = {"now": 0.0}
    server = DeploymentLimiter(
        tpm=tpm, rpm=max(1, 6 * tpm // 1000), clock=lambda: clock["now"], profile=profile
    )
    quota = DeploymentQuota("d", tpm)
    rng = random.Random(seed)
    out = Lanes()
    events: list[tuple[float, int, str, int, Priority, Any]] = []
    order = 0

    def push(t: float, kind: str, user: int, who: Priority, payload: Any) -> None:
        nonlocal order
        heapq.heappush(events, (t, order, kind, user, who, payload))
        order += 1

    users = [(i, INTERACTIVE) for i in range(interactive)] + [
        (interactive + i, BATCH) for i in range(batch)
    ]
    for user, who in users:
        push(rng.random(), "ready", user, who, (0, None))
    while events:
        now, _, kind, user, who, payload = heapq.heappop(events)
        if now > duration_s:
            break
        clock["now"] = now
        if kind == "ready":
            step, first = payload
            first = now if first is None else first
            prompt, max_tokens = CALLS[step % len(CALLS)]
            size = CallSize(prompt, max_tokens)
            at = quota.plan(size, now, who)
            if at - now > WAIT_BUDGET_S:
                push(quota.defer(size, at), "ready", user, who, (step, first))
                continue
            if at - now > BATCH_BOOK_AHEAD_S and not quota.books_ahead(who, now):
                push(at, "ready", user, who, (step, first))  # wait unbooked, plan again
                continue
            reservation = quota.reserve(size, at, who)
            push(at, "send", user, who, (step, first, reservation, size))
        elif kind == "send":
            step, first, reservation, size = payload
            quota.mark_sent(reservation, now)
            decision = server.try_acquire(profile.charge_for(size.prompt, size.max_tokens))
            if not decision.admitted:
                out.refused += 1
                quota.refund(reservation)
                quota.throttle(decision.retry_after_ms / 1000, now)
                push(now, "ready", user, who, (step, first))
                continue
            if now >= measure_from:
                out.waits[who].append(now - first)
                out.tokens[who] += server.charge_for(
                    profile.charge_for(size.prompt, size.max_tokens)
                )
            push(now + LATENCY_S, "answer", user, who, (step, reservation, size))
        else:
            step, reservation, size = payload
            seen = server.peek()
            quota.observe(
                reservation,
                RateLimitInfo(seen.remaining_tokens, seen.remaining_requests, None),
                now,
                usage=(size.prompt, size.max_tokens // 2),
            )
            think = interactive_think_s * rng.random() * 2 if who == INTERACTIVE else 0.0
            push(now + think, "ready", user, who, (step + 1, None))
    return out


@pytest.mark.parametrize(("profile", "tpm"), [(AZURE, 210_000), (MAXTOKENS_MINUTE, 210_000)])
def test_interactive_calls_wait_about_as_long_with_a_batch_running(
    profile: AccountingProfile, tpm: int
) -> None:
    think = 2.0  # ten users, about a third of the quota
    alone = run_lanes(
        profile,
        tpm=tpm,
        interactive=10,
        batch=0,
        duration_s=160.0,
        measure_from=40.0,
        interactive_think_s=think,
    )
    shared = run_lanes(
        profile,
        tpm=tpm,
        interactive=10,
        batch=40,
        duration_s=160.0,
        measure_from=40.0,
        interactive_think_s=think,
    )
    p95_alone = percentile(alone.waits[INTERACTIVE], 0.95)
    p95_shared = percentile(shared.waits[INTERACTIVE], 0.95)
    # Within 1.2x of the interactive wait alone (plus one request-window tick of slack, since
    # alone it is often zero).
    assert p95_shared <= 1.2 * p95_alone + 0.25
    # The batch drains what interactive leaves: at least half of the remaining quota.
    seconds = 120.0
    bound = tpm / 60.0 * seconds
    window_s, allowed = profile.request_windows(tpm, 6 * tpm // 1000)[-1]
    mean = sum(profile.charge_for(p, m) for p, m in CALLS) / len(CALLS)
    bound = min(bound, allowed / window_s * mean * seconds)
    remaining = bound - shared.tokens[INTERACTIVE]
    assert shared.tokens[BATCH] >= 0.5 * remaining
    assert shared.refused <= 0.01 * (len(shared.waits[INTERACTIVE]) + len(shared.waits[BATCH]))


def test_batch_keeps_its_floor_when_interactive_alone_could_use_everything() -> None:
    run = run_lanes(
        AZURE, tpm=10_000, interactive=30, batch=30, duration_s=160.0, measure_from=40.0
    )
    total = run.tokens[INTERACTIVE] + run.tokens[BATCH]
    assert run.tokens[BATCH] >= 0.8 * MIN_BATCH_SHARE * total
    assert run.tokens[INTERACTIVE] > run.tokens[BATCH]


def test_without_interactive_work_batch_has_the_whole_quota() -> None:
    run = run_lanes(AZURE, tpm=10_000, interactive=0, batch=20, duration_s=160.0, measure_from=40.0)
    assert run.tokens[BATCH] >= 0.85 * 10_000 / 60.0 * 120.0


async def test_the_lane_follows_the_context_into_tasks() -> None:
    import asyncio

    async def seen() -> Priority:
        return current_lane()

    assert current_lane() == INTERACTIVE
    with lane("batch"):
        assert await asyncio.create_task(seen()) == BATCH
    assert current_lane() == INTERACTIVE


async def test_a_batch_call_waits_unbooked_behind_interactive_bookings() -> None:
    from tests.unit.test_llm_guarded import ScriptedEndpoint, model, request

    endpoint = ScriptedEndpoint()
    guarded, clock, metrics = model(endpoint)
    quota = guarded.limiter.quota("primary")
    now = clock.monotonic()
    # Batch already has more than its floor of the window, and an interactive call is booked
    # 4 s ahead: the batch call's slot comes after it, so it waits without booking.
    quota.reserve(CallSize(0, 2_500), now, BATCH)
    quota.reserve(CallSize(0, 3_000), now + 4.0)
    booked_while_sleeping: list[float] = []
    real_sleep = clock.sleep

    async def sleep(seconds: float) -> None:
        booked_while_sleeping.append(quota.lane_usage(clock.monotonic())["batch"])
        await real_sleep(seconds)

    clock.sleep = sleep  # type: ignore[method-assign]
    with lane(BATCH):
        result = await guarded.complete(request())
    assert result.deployment == "primary"
    assert clock.slept
    assert clock.slept[0] > BATCH_BOOK_AHEAD_S
    assert booked_while_sleeping[0] == 2_500  # the call had booked nothing while it waited
    # The wait is in the metrics, and the slot it took is in the batch lane.
    assert metrics.waits
    assert metrics.waits[0] >= clock.slept[0]
    assert quota.lane_usage(clock.monotonic())["batch"] > 0
