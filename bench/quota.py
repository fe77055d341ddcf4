"""Quota benchmark: the guarded LLM layer against a naive client on the same simulated quota.

    python -m bench.quota                               # every profile, about 45 minutes
    python -m bench.quota --profile maxtokens-minute    # one accounting profile
    python -m bench.quota --quick                       # a smoke run
    python -m bench.quota --stray                       # the stray-429 scenario instead

For each accounting profile of the simulator (``devhost.simulator.accounting``: ``azure``,
``maxtokens-minute`` and ``usage-minute``), each quota (10,000 and 210,000 TPM) and each number of
closed-loop users (3, 10, 50, 200), two populations run one after the other on one deployment of
that profile. The guarded client is told the TPM only, never the profile; it learns how the
server charges.

* guarded: ``GuardedChatModel`` (limiter, one retry layer, SDK retries off). A ``RetryLater`` is
  handled the way the pipeline handles it, with the pipeline's own rule
  (``shared.llm.budget.decide_reschedule``): the user waits until the time it returns (the
  delay plus its jitter; the message would be re-sent with that scheduled enqueue time) and
  tries the call again, and gives up when it returns None (the total budget is spent);
  a ``TransientError`` is a redelivery, up to a delivery count of 10.
* naive: a plain ``AsyncAzureOpenAI`` with the SDK's default retries (2, honouring
  ``retry-after``) and no limiter; any exception fails the conversation.

A conversation is three calls: intent 150+60, response 200+150, critic 180+40 (prompt +
``max_tokens``). Each profile charges it differently: 780 tokens under ``azure`` (prompt +
``max_tokens``), 250 under ``maxtokens-minute`` (``max_tokens`` only), and under ``usage-minute``
what its answers used (``total_tokens``, charged when the call is answered; the table's bound for
that profile takes the mean charge of each population's own answers, so it can differ between
the two rows of a cell). The quota bound counts what the profile charges, because that is what
the service meters: the smaller of ``TPM / charge`` and what its request windows allow (3
requests per conversation). With few
users the loop itself bounds throughput (users / (3 calls x latency)); the table's bound is the
smallest of the three, and the column ``by`` says which one it is.

The stray-429 scenario (``--stray``) runs the guarded population alone at saturation, forces one
429 (the simulator's ``x-sim-fault: 429``: whole-second ``retry-after``, and ``retry-after-ms``
where the profile sends it) on one call, and prints the charged tokens of the minute after it
against the minute before; where the request windows bind, the calls instead (their tokens
vary with which of the conversation's calls a minute holds, by up to a fifth in a 10,000 TPM
``maxtokens-minute`` cell with no 429 at all).

Goodput counts, in conversation equivalents, the charged tokens of successful calls by
conversations that did not fail, as the server's window held them: a call counts for the part of
its stay in the window (10 s from its arrival under ``azure``) that falls inside the measuring
window. That is the mean of the server's own window contents over the measuring window, so it
cannot exceed the bound, and no whole call falls in or out at the window's edges (at 10,000 TPM
one call is 4-5 % of what a 35 s window holds). The column ``whole`` gives the same ratio counting
whole calls answered inside the window, for comparison. Completions alone would mislead in a
short window at high concurrency, where a conversation takes minutes (the users queue for the
quota) and few finish inside the window even when the deployment is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.packing_bound import fullest_mean_window
from bench.quota_lanes import main_lanes, main_stray
from bench.quota_load import (
    CALLS,
    LATENCY_MS,
    Plan,
    Tally,
    cell_bound,
    conversation_charge,
    deployment_rpm,
    population,
    quota_bound,
    start_bench_simulator,
)
from bench.stats import percentile
from devhost.simulator.accounting import PROFILES, AccountingProfile

__all__ = [
    "CALLS",
    "LATENCY_MS",
    "conversation_charge",
    "ideal_packing",
    "legend",
    "main",
    "packing",
    "quota_bound",
    "run",
    "select_plans",
]

FULL = (
    Plan(10_000, (3, 10, 50, 200), warmup_s=12.0, measure_s=35.0),
    Plan(210_000, (3, 10, 50, 200), warmup_s=12.0, measure_s=20.0),
)
QUICK = (
    Plan(10_000, (3, 50), warmup_s=5.0, measure_s=10.0),
    Plan(210_000, (10, 200), warmup_s=3.0, measure_s=6.0),
)


@dataclass
class Row:
    tpm: int
    users: int
    client: str
    tally: Tally
    bound: float
    duration: float
    profile: AccountingProfile = PROFILES["azure"]
    bound_by: str = "tpm"
    pack: float = 1.0
    """The share of the bound FIFO admission of whole calls can reach (``packing``)."""
    ideal: float = 1.0
    """The share of the bound no order of whole calls can beat (``ideal_packing``)."""

    @property
    def goodput(self) -> float:
        """Conversation equivalents per second in the resource that binds: calls / 3 where the
        request windows bind (the calls' token mix then says nothing), else charged tokens;
        as the server's window held them over the measuring window (``Tally.held``)."""
        longest = self.profile.request_windows(self.tpm, deployment_rpm(self.tpm))[-1][0]
        if self.bound_by == "rpm":
            return self.tally.held(longest, per_call=True) / len(CALLS)
        # Where the users' loop binds, no window is full: any span inside the warm-up measures
        # the rate (a 60 s token window would reach back before the cell began).
        span = self.profile.token_window_s if self.bound_by == "tpm" else longest
        return self.tally.held(span) / self.tally.conversation_charge()

    @property
    def completed(self) -> float:
        """The same, counting whole calls answered inside the window (the edge-sensitive
        count: one call is several per cent of a short window at 10,000 TPM)."""
        if self.bound_by == "rpm":
            return self.tally.useful_calls / len(CALLS) / self.duration
        return self.tally.useful_tokens / self.tally.conversation_charge() / self.duration

    def cells(self) -> list[str]:
        t = self.tally
        conv_rate = t.conversations_done / self.duration
        per_call = t.throttled / t.http_calls if t.http_calls else 0.0
        lat = t.latencies
        p50 = f"{percentile(lat, 0.5):7.1f}" if lat else "      -"
        p95 = f"{percentile(lat, 0.95):7.1f}" if lat else "      -"
        little = self.users / self.goodput if self.goodput > 0 else math.inf
        return [
            f"{self.profile.name:<16}",
            f"{self.tpm:>7,}",
            f"{self.users:>5}",
            f"{self.client:<7}",
            f"{self.goodput:6.3f}",
            f"{self.completed / self.bound:5.2f}",
            f"{self.bound:6.3f}",
            f"{self.bound_by:<5}",
            f"{self.pack:4.2f}",
            f"{self.ideal:5.2f}",
            f"{self.goodput / self.bound:5.2f}",
            f"{conv_rate:6.3f}",
            f"{per_call:8.2%}",
            f"{t.http_calls:>6}",
            f"{t.conversations_failed:>5}",
            p50,
            p95,
            f"{little:7.1f}",
            f"{t.reschedules:>7}",
        ]


HEADER = [
    "profile         ",
    "    TPM",
    "users",
    "client ",
    "good/s",
    "whole",
    "bound ",
    "by   ",
    "pack",
    "ideal",
    "ratio",
    "conv/s",
    "429/call",
    " calls",
    " fail",
    "  P50 s",
    "  P95 s",
    "N/X s  ",
    "resched",
]


async def _run_cell(
    simulator: Any,
    plan: Plan,
    users: int,
    clients: tuple[str, ...] = ("guarded", "naive"),
    profile: AccountingProfile = PROFILES["azure"],
) -> list[Row]:
    rows = []
    cell_plan = settled(plan, profile, users)
    if cell_plan != plan:
        print(f"   ({users} users: warm-up {cell_plan.warmup_s:.0f}s, a whole token window)")
        plan = cell_plan
    for client in clients:
        # Let requests of the previous population still in sockets land, then start the next
        # population on fresh rate windows.
        await asyncio.sleep(1.0)
        simulator.reset()
        tally = await population(
            simulator.base_url, plan, users, client, seed=users + plan.tpm, profile=profile
        )
        bound, bound_by = cell_bound(profile, plan.tpm, users, tally.conversation_charge())
        pack = packing(profile, plan.tpm, bound_by) if bound_by != "loop" else 1.0
        ideal = ideal_packing(profile, plan.tpm, bound_by) if bound_by != "loop" else 1.0
        rows.append(
            Row(
                plan.tpm,
                users,
                client,
                tally,
                bound,
                plan.measure_s,
                profile,
                bound_by,
                pack,
                ideal,
            )
        )
    return rows


def settled(plan: Plan, profile: AccountingProfile, users: int) -> Plan:
    """The plan of one cell: where the token window binds and is longer than the warm-up (the
    60 s window of ``usage-minute``), the warm-up lasts a window and two seconds, so that the
    server's window holds a full window of sending when the measuring begins. Before that its
    contents still ramp up from the empty start, and their mean says how long the cell has
    run, not how much of the quota the client uses. Which window binds is judged before the
    cell runs, so a usage charge counts at its most (``conversation_charge``)."""
    window = profile.token_window_s
    _, by = cell_bound(profile, plan.tpm, users)
    if by != "tpm" or plan.warmup_s >= window:
        return plan
    return replace(plan, warmup_s=window + 2.0)


def packing(profile: AccountingProfile, tpm: int, by: str) -> float:
    """The share of its bound FIFO admission of whole calls can reach: about half a mean call
    of every token window stays unused, and the guard (0.1 s) lengthens every window."""
    window = profile.token_window_s
    if by == "rpm":
        return 10.0 / 10.1
    if profile.charged_on_answer:
        # Admitted while any room is left, whatever its size: no whole call is left over.
        return window / (window + 0.1)
    mean_charge = conversation_charge(profile) / len(CALLS)
    limit = profile.token_capacity(tpm)
    return (1.0 - mean_charge / (2.0 * limit)) * window / (window + 0.1)


def ideal_packing(
    profile: AccountingProfile,
    tpm: int,
    by: str,
    calls: Sequence[tuple[str, int, int]] = CALLS,
) -> float:
    """The share of its bound no admission order of whole ``calls`` (a conversation's, by
    default) can beat (``bench.packing_bound``), times window / (window + guard)."""
    if by != "tpm" or profile.charged_on_answer:
        return packing(profile, tpm, by)
    window = profile.token_window_s
    limit = profile.token_capacity(tpm)
    charges = [profile.charge_for(p, m) for _, p, m in calls]
    if sum(charges) / len(charges) < 0.05 * limit:
        return window / (window + 0.1)  # small calls: a window packs to within a call or so
    return fullest_mean_window(charges, limit) * window / (window + 0.1)


def select_plans(quick: bool, tpm: int | None = None, users: int | None = None) -> tuple[Plan, ...]:
    """The plans to run: only the quota ``tpm`` if given, each with only ``users`` if given.

    Raises ``ValueError`` for a ``tpm`` no plan has (its warm-up and window are per quota) or
    a ``users`` below 1.
    """
    plans: tuple[Plan, ...] = QUICK if quick else FULL
    if tpm is not None:
        matching = tuple(p for p in plans if p.tpm == tpm)
        if not matching:
            known = ", ".join(str(p.tpm) for p in plans)
            raise ValueError(
                f"no {'quick' if quick else 'full'} plan for {tpm} TPM; one of {known}"
            )
        plans = matching
    if users is not None:
        if users < 1:
            raise ValueError(f"users must be at least 1, not {users}")
        plans = tuple(replace(p, users=(users,)) for p in plans)
    return plans


def legend() -> str:
    """What the table's columns mean, from the figures the run uses."""
    calls = len(CALLS)
    charges = ", ".join(
        f"{p.name} {'what its answers used' if p.charged_on_answer else conversation_charge(p)}"
        for p in PROFILES.values()
    )
    return (
        f"conversation = {calls} calls; tokens charged per conversation: {charges}; "
        f"simulator latency {LATENCY_MS:.0f} ms. good/s: conversation equivalents per second "
        "(charged tokens of successful calls / the profile's charge per conversation; "
        "successful calls / 3 where the request windows bind), each call counted for the part "
        "of its stay in the server's window inside the measuring window; whole: good/s over "
        "bound counting whole calls answered inside the window instead; "
        f"bound: min(TPM/charge/60, request windows/{calls}, users/({calls} x latency)), by: "
        "which of tpm, rpm, loop binds; pack: the share of the bound FIFO admission of whole "
        "calls can reach (1 - mean call / 2 token windows, x window / (window + guard)); "
        "ideal: the share no order of whole calls can beat (the fullest mean window in the "
        "conversation's proportions, x window / (window + guard)); "
        "P50/P95: conversations completed inside the window; "
        "N/X: users / goodput (Little's law)"
    )


async def main(
    quick: bool,
    *,
    tpm: int | None = None,
    users: int | None = None,
    clients: tuple[str, ...] = ("guarded", "naive"),
    profiles: tuple[AccountingProfile, ...] = tuple(PROFILES.values()),
    measure_s: float | None = None,
) -> int:
    plans = select_plans(quick, tpm, users)
    if measure_s is not None:
        plans = tuple(replace(p, measure_s=measure_s) for p in plans)
    simulator = await start_bench_simulator([p.tpm for p in plans], profiles)
    print(legend())
    print(" | ".join(HEADER))
    rows: list[Row] = []
    try:
        for profile in profiles:
            for plan in plans:
                print(
                    f"-- {profile.name}, {plan.tpm:,} TPM: warm-up {plan.warmup_s:.0f}s, "
                    f"window {plan.measure_s:.0f}s"
                )
                for count in plan.users:
                    for row in await _run_cell(simulator, plan, count, clients, profile):
                        rows.append(row)
                        print(" | ".join(row.cells()), flush=True)
    finally:
        await simulator.stop()
    for row in rows:
        if row.tally.failure_kinds:
            kinds = row.tally.failure_kinds
            print(
                f"{row.profile.name}, {row.tpm:,} TPM, {row.users} users, {row.client}: "
                f"failures {kinds}"
            )
    return 0


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--tpm", type=int, help="run only this quota")
    parser.add_argument("--users", type=int, help="run only this number of users")
    parser.add_argument(
        "--client", choices=("guarded", "naive"), action="append", help="run only this client"
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), action="append", help="run only this profile"
    )
    parser.add_argument("--measure-s", type=float, help="a shorter (or longer) measuring window")
    parser.add_argument("--stray", action="store_true", help="the stray-429 scenario instead")
    parser.add_argument("--lanes", action="store_true", help="the priority-lanes scenario instead")
    parser.add_argument("--think-s", type=float, default=5.0, help="lanes: mean think time")
    parser.add_argument("--batch-workers", type=int, default=50, help="lanes: batch workers")
    parser.add_argument(
        "--stray-span-s", type=float, default=60.0, help="seconds compared before and after"
    )
    args = parser.parse_args()
    try:
        select_plans(args.quick, args.tpm, args.users)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.ERROR)
    clients = tuple(args.client) if args.client else ("guarded", "naive")
    profiles = tuple(PROFILES[name] for name in (args.profile or PROFILES))
    if args.lanes:
        with contextlib.suppress(KeyboardInterrupt):
            raise SystemExit(
                asyncio.run(
                    main_lanes(
                        args.tpm or 210_000,
                        profiles,
                        interactive_users=args.users or 10,
                        think_s=args.think_s,
                        batch_workers=args.batch_workers,
                        measure_s=args.measure_s or 60.0,
                    )
                )
            )
    if args.stray:
        tpms = (args.tpm,) if args.tpm else (10_000, 210_000)
        with contextlib.suppress(KeyboardInterrupt):
            raise SystemExit(
                asyncio.run(main_stray(tpms, args.users or 50, profiles, args.stray_span_s))
            )
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(
            asyncio.run(
                main(
                    args.quick,
                    tpm=args.tpm,
                    users=args.users,
                    clients=clients,
                    profiles=profiles,
                    measure_s=args.measure_s,
                )
            )
        )


if __name__ == "__main__":
    run()
