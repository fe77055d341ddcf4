"""The quota benchmark's two scenarios beside the main table (``bench.quota``).

* ``--stray``: the guarded population alone at saturation, one forced 429, the charged tokens of
  the span after it against the span before;
* ``--lanes``: interactive users alone, then beside batch-lane workers, through one guarded
  client: the interactive P95 and what batch takes of the room interactive leaves.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from bench.quota_load import (
    API_KEY,
    API_VERSION,
    CALLS,
    Plan,
    Tally,
    around,
    deployment_name,
    guarded_call,
    guarded_settings,
    http_client,
    population,
    quota_bound,
    run_user,
    start_bench_simulator,
    stray_per_call,
)
from bench.stats import percentile
from devhost.simulator.accounting import AccountingProfile
from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
from shared.config import LLMSettings
from shared.domain.messages import Priority
from shared.llm.guarded import GuardedChatModel
from shared.llm.tokens import (
    CharEstimator,
)

LANES_WARMUP_S = 15.0
STRAY_SETTLE_S = 15.0
"""The stray scenario's fault comes this long after its first span: the users have reached
saturation before the span it is compared with begins."""


async def run_stray(
    simulator: Any, tpm: int, users: int, profile: AccountingProfile, span_s: float
) -> tuple[float, float, Tally]:
    """Charged tokens per second in ``span_s`` before and after one forced 429."""
    plan = Plan(tpm, (users,), warmup_s=span_s + STRAY_SETTLE_S, measure_s=span_s)
    await asyncio.sleep(1.0)
    simulator.reset()
    started = time.monotonic()
    inject = started + plan.warmup_s
    tally = await population(
        simulator.base_url,
        plan,
        users,
        "guarded",
        seed=users + tpm,
        profile=profile,
        fault_at=inject,
    )
    return *around(tally, inject, span_s, per_call=stray_per_call(profile, tpm)), tally


@dataclass
class LaneRun:
    interactive: Tally
    batch: Tally | None


def _guarded_client(
    base_url: str, settings: LLMSettings, tally: Tally
) -> tuple[openai.AsyncAzureOpenAI, GuardedChatModel]:
    """An SDK client with its retries off (its HTTP calls counted in ``tally``) and the
    guarded model over it, as one instance of the app builds them."""
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=http_client(tally),
        max_retries=0,
        timeout=settings.timeout_s,
    )
    model = GuardedChatModel(
        OpenAIChatEndpoint(settings, client=sdk), settings=settings, estimator=CharEstimator()
    )
    return sdk, model


async def run_lanes(
    simulator: Any,
    tpm: int,
    profile: AccountingProfile,
    *,
    interactive_users: int,
    think_s: float,
    batch_workers: int,
    warmup_s: float,
    measure_s: float,
) -> LaneRun:
    """Interactive users chatting, with ``batch_workers`` batch-lane workers beside them (none:
    the interactive users alone), all through one guarded client, as one instance runs."""
    await asyncio.sleep(1.0)
    simulator.reset()
    plan = Plan(tpm, (interactive_users,), warmup_s=warmup_s, measure_s=measure_s)
    deployment = deployment_name(tpm, profile)
    start = time.monotonic()
    window = (start + warmup_s, start + warmup_s + measure_s)
    interactive = Tally(window, profile)
    batch = Tally(window, profile) if batch_workers else None
    settings = guarded_settings(simulator.base_url, plan, deployment)
    sdk, model = _guarded_client(simulator.base_url, settings, interactive)
    stop = asyncio.Event()
    rng = random.Random(tpm)
    call = functools.partial(guarded_call, model, settings)
    tasks = [
        asyncio.create_task(
            run_user(
                random.Random(rng.random()), call(interactive), interactive, stop, think_s=think_s
            )
        )
        for _ in range(interactive_users)
    ]
    if batch is not None:
        tasks += [
            asyncio.create_task(
                run_user(
                    random.Random(rng.random()), call(batch), batch, stop, priority=Priority.BATCH
                )
            )
            for _ in range(batch_workers)
        ]
    try:
        await asyncio.sleep(window[1] - time.monotonic())
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await model.close()
        await sdk.close()
    return LaneRun(interactive, batch)


async def main_lanes(
    tpm: int,
    profiles: tuple[AccountingProfile, ...],
    *,
    interactive_users: int,
    think_s: float,
    batch_workers: int,
    measure_s: float,
) -> int:
    simulator = await start_bench_simulator([tpm], profiles)
    print(
        f"lanes: {interactive_users} interactive users (think time uniform in "
        f"[0, {2 * think_s:.0f}] s) alone, then with {batch_workers} batch-lane workers "
        f"(closed loop, no think time), one guarded client; window {measure_s:.0f}s"
    )
    print(
        "profile          |     TPM | int P95 alone | int P95 w/ batch | ratio | int good/s "
        "| batch good/s | remaining | batch/remaining | fail | 429/call"
    )
    try:
        for profile in profiles:
            alone = await run_lanes(
                simulator,
                tpm,
                profile,
                interactive_users=interactive_users,
                think_s=think_s,
                batch_workers=0,
                warmup_s=LANES_WARMUP_S,
                measure_s=measure_s,
            )
            both = await run_lanes(
                simulator,
                tpm,
                profile,
                interactive_users=interactive_users,
                think_s=think_s,
                batch_workers=batch_workers,
                warmup_s=LANES_WARMUP_S,
                measure_s=measure_s,
            )
            print(lanes_row(profile, tpm, alone, both, measure_s), flush=True)
    finally:
        await simulator.stop()
    return 0


async def main_stray(
    tpms: tuple[int, ...], users: int, profiles: tuple[AccountingProfile, ...], span_s: float
) -> int:
    simulator = await start_bench_simulator(list(tpms), profiles)
    print(
        f"stray 429: guarded, {users} users; charged tokens/s in the {span_s:.0f}s before and "
        "after one forced 429 (x-sim-fault: 429); calls/s where the request windows bind "
        "(unit: calls), as their tokens vary only with which calls a span holds"
    )
    print("profile          |     TPM | before/s | after/s | after/before | 429s | calls | unit")
    try:
        for profile in profiles:
            for tpm in tpms:
                before, after, tally = await run_stray(simulator, tpm, users, profile, span_s)
                ratio = after / before if before else math.nan
                print(
                    f"{profile.name:<16} | {tpm:>7,} | {before:8.1f} | {after:7.1f} | "
                    f"{ratio:12.3f} | {tally.throttled:>4} | {tally.http_calls:>5} | "
                    f"{'calls' if stray_per_call(profile, tpm) else 'tokens'}",
                    flush=True,
                )
    finally:
        await simulator.stop()
    return 0


@dataclass(frozen=True)
class LaneFigures:
    """What one lanes row reports: interactive latency alone and beside batch, and the rates."""

    p95_alone: float
    p95_both: float
    interactive_rate: float
    batch_rate: float
    remaining: float
    """The bound less what interactive used beside batch: the room batch could take."""
    fails: int
    throttled_share: float

    @property
    def batch_share(self) -> float:
        return self.batch_rate / self.remaining


def lane_figures(
    profile: AccountingProfile, tpm: int, alone: LaneRun, both: LaneRun, measure_s: float
) -> LaneFigures:
    """The figures of a lanes row from its two runs (``measure_s``: the window they cover)."""
    assert both.batch is not None
    # What a conversation was charged: the profile's charge on arrival, or what the calls
    # beside batch used where the profile charges usage (the lanes make the same calls).
    charge = both.interactive.conversation_charge()
    bound, by = quota_bound(profile, tpm, charge)

    def rate(tally: Tally) -> float:
        if by == "rpm":
            return tally.useful_calls / len(CALLS) / measure_s
        return tally.useful_tokens / charge / measure_s

    interactive_rate = rate(both.interactive)
    calls = both.interactive.http_calls
    return LaneFigures(
        percentile(alone.interactive.latencies, 0.95),
        percentile(both.interactive.latencies, 0.95),
        interactive_rate,
        rate(both.batch),
        bound - interactive_rate,
        both.interactive.conversations_failed
        + both.batch.conversations_failed
        + alone.interactive.conversations_failed,
        both.interactive.throttled / calls if calls else 0.0,
    )


def lanes_row(
    profile: AccountingProfile, tpm: int, alone: LaneRun, both: LaneRun, measure_s: float
) -> str:
    """One row of the lanes table: interactive latency alone and beside batch, and the share of
    the room interactive leaves that batch takes."""
    f = lane_figures(profile, tpm, alone, both, measure_s)
    return (
        f"{profile.name:<16} | {tpm:>7,} | {f.p95_alone:13.2f} | {f.p95_both:16.2f} | "
        f"{f.p95_both / f.p95_alone:5.2f} | {f.interactive_rate:10.3f} | {f.batch_rate:12.3f} | "
        f"{f.remaining:9.3f} | {f.batch_share:15.2f} | {f.fails:>4} | "
        f"{f.throttled_share:8.2%}"
    )
