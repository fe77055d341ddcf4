"""Quota benchmark: the guarded LLM layer against a naive client on the same simulated quota.

    python -m bench.quota                               # every profile, about 22 minutes
    python -m bench.quota --profile maxtokens-minute    # one accounting profile
    python -m bench.quota --quick                       # a smoke run
    python -m bench.quota --stray                       # the stray-429 scenario instead

For each accounting profile of the simulator (``devhost.simulator.accounting``: ``azure`` and
``maxtokens-minute``), each quota (10,000 and 210,000 TPM) and each number of closed-loop users
(3, 10, 50, 200), two populations run one after the other on one deployment of that profile.
The guarded client is told the TPM only, never the profile; it learns how the server charges.

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
``max_tokens``), 250 under ``maxtokens-minute`` (``max_tokens`` only). The quota bound counts
what the profile charges, because that is what the service meters: the smaller of
``TPM / charge`` and what its request windows allow (3 requests per conversation). With few
users the loop itself bounds throughput (users / (3 calls x latency)); the table's bound is the
smallest of the three, and the column ``by`` says which one it is.

The stray-429 scenario (``--stray``) runs the guarded population alone at saturation, forces one
429 (the simulator's ``x-sim-fault: 429``: whole-second ``retry-after``, and ``retry-after-ms``
where the profile sends it) on one call, and prints the charged tokens of the minute after it
against the minute before.

Goodput counts, in conversation equivalents, the charged tokens of successful calls made inside
the measuring window by conversations that did not fail; completions alone would mislead in a
short window at high concurrency, where a conversation takes minutes (the users queue for the
quota) and few finish inside the window even when the deployment is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import openai

from bench.packing_bound import fullest_mean_window
from bench.stats import percentile
from devhost.simulator.accounting import PROFILES, AccountingProfile
from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
from shared.config import LLMSettings, Secret
from shared.domain.messages import Priority, Stage
from shared.errors import RetryLater, TransientError
from shared.llm.budget import decide_reschedule
from shared.llm.guarded import GuardedChatModel
from shared.llm.lanes import lane
from shared.llm.tokens import (
    CHARS_PER_TOKEN,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    CharEstimator,
)
from shared.ports import ChatRequest

API_KEY = "bench-key"
API_VERSION = "2024-10-21"
LATENCY_MS = 300.0
MAX_DELIVERIES = 10
TOTAL_BUDGET_S = 900.0

CALLS = (  # stage, prompt tokens, max_tokens
    (Stage.INTENT, 150, 60),
    (Stage.RESPONSE, 200, 150),
    (Stage.CRITIC, 180, 40),
)
CHARGE_PER_CONVERSATION = sum(p + m for _, p, m in CALLS)
"""Azure's charge of one conversation (prompt + ``max_tokens`` of its calls)."""


def conversation_charge(profile: AccountingProfile) -> int:
    """What ``profile`` charges for one conversation."""
    return sum(profile.charge_for(p, m) for _, p, m in CALLS)


def quota_bound(profile: AccountingProfile, tpm: int) -> tuple[float, str]:
    """Conversations per second the profile's windows allow, and which window binds."""
    by_tokens = tpm / conversation_charge(profile) / 60.0
    rpm = max(1, 6 * tpm // 1000)
    per_call = min(allowed / window for window, allowed in profile.request_windows(tpm, rpm))
    by_requests = per_call / len(CALLS)
    return (by_tokens, "tpm") if by_tokens <= by_requests else (by_requests, "rpm")


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
WORDS = [
    "order",
    "refund",
    "delivery",
    "account",
    "invoice",
    "broken",
    "late",
    "missing",
    "help",
    "please",
    "thanks",
]


@dataclass(frozen=True)
class Plan:
    tpm: int
    users: tuple[int, ...]
    warmup_s: float
    measure_s: float


FULL = (
    Plan(10_000, (3, 10, 50, 200), warmup_s=12.0, measure_s=35.0),
    Plan(210_000, (3, 10, 50, 200), warmup_s=12.0, measure_s=20.0),
)
QUICK = (
    Plan(10_000, (3, 50), warmup_s=5.0, measure_s=10.0),
    Plan(210_000, (10, 200), warmup_s=3.0, measure_s=6.0),
)


def _text(rng: random.Random, tokens: int) -> str:
    """Filler of about ``tokens`` estimated tokens (chars/4), unique so no cache can help."""
    chars = int(tokens * CHARS_PER_TOKEN)
    words: list[str] = [f"#{rng.getrandbits(48):x}"]
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:chars]


def _messages(rng: random.Random, prompt_tokens: int) -> list[dict[str, str]]:
    """A system and a user message that ``CharEstimator`` counts as ``prompt_tokens``."""
    framing = REPLY_PRIMING_TOKENS + 2 * TOKENS_PER_MESSAGE
    system = "Answer as JSON."
    body = prompt_tokens - framing - math.ceil(len(system) / CHARS_PER_TOKEN)
    return [{"role": "system", "content": system}, {"role": "user", "content": _text(rng, body)}]


@dataclass
class Tally:
    """What one population did during one cell."""

    window: tuple[float, float]
    profile: AccountingProfile = PROFILES["azure"]
    http_calls: int = 0
    throttled: int = 0
    conversations_done: int = 0
    conversations_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    useful_tokens: float = 0.0
    useful_calls: int = 0
    reschedules: int = 0  # RetryLater waited out and retried (guarded only), the whole cell
    failure_kinds: dict[str, int] = field(default_factory=dict)
    answers: list[tuple[float, int]] = field(default_factory=list)
    """(time, charged tokens) of every successful call, in the window or not."""

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t <= self.window[1]

    def count_response(self, status: int) -> None:
        if self.in_window(time.monotonic()):
            self.http_calls += 1
            self.throttled += status == 429

    def failed(self, exc: BaseException) -> None:
        self.conversations_failed += 1
        kind = type(exc).__name__
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1


CallFn = Callable[[ChatRequest], Awaitable[None]]


async def _user(
    rng: random.Random,
    call: CallFn,
    tally: Tally,
    stop: asyncio.Event,
    *,
    think_s: float = 0.0,
    priority: Priority = Priority.INTERACTIVE,
) -> None:
    """A closed-loop user: one conversation after another, after a think time drawn uniformly
    from [0, 2 x ``think_s``]; its calls are made in the lane of ``priority``.

    A successful call's charged tokens count as useful as soon as it returns inside the window
    (a conversation still running when the cell ends has done that work), and are taken back
    if its conversation later fails.
    """
    with lane(priority):
        await _conversations(rng, call, tally, stop, think_s)


async def _conversations(
    rng: random.Random, call: CallFn, tally: Tally, stop: asyncio.Event, think_s: float
) -> None:
    while not stop.is_set():
        if think_s > 0:
            await asyncio.sleep(rng.uniform(0.0, 2.0 * think_s))
        begun = time.monotonic()
        counted = 0
        calls_counted = 0
        try:
            for stage, prompt, max_tokens in CALLS:
                request = ChatRequest(
                    stage=stage.value,
                    messages=_messages(rng, prompt),
                    schema_name="answer",
                    json_schema=SCHEMA,
                    max_tokens=max_tokens,
                    temperature=0.0,
                )
                await call(request)
                charged = tally.profile.charge_for(prompt, max_tokens)
                answered = time.monotonic()
                tally.answers.append((answered, charged))
                if tally.in_window(answered):
                    tally.useful_tokens += charged
                    tally.useful_calls += 1
                    counted += charged
                    calls_counted += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tally.useful_tokens -= counted
            tally.useful_calls -= calls_counted
            if tally.in_window(time.monotonic()):
                tally.failed(exc)
            continue
        done = time.monotonic()
        if tally.in_window(done):
            tally.conversations_done += 1
            tally.latencies.append(done - begun)


def _guarded_call(model: GuardedChatModel, settings: LLMSettings, tally: Tally) -> CallFn:
    async def call(request: ChatRequest) -> None:
        waited = 0.0
        deliveries = 0
        while True:
            try:
                await model.complete(request)
                return
            except RetryLater as exc:
                # The pipeline's rule: re-send at the time decide_reschedule picks (the delay
                # plus jitter), or give up once the total budget is spent; the user waits for it.
                now = datetime.now(UTC)
                at = decide_reschedule(waited, now, exc.delay_s, settings)
                if at is None:
                    raise
                waited += (at - now).total_seconds()
                tally.reschedules += 1
                await asyncio.sleep((at - now).total_seconds())
            except TransientError:
                deliveries += 1  # abandoned and redelivered by the broker
                if deliveries >= MAX_DELIVERIES:
                    raise

    return call


def _naive_call(client: openai.AsyncAzureOpenAI, deployment: str) -> CallFn:
    async def call(request: ChatRequest) -> None:
        body: dict[str, Any] = {
            "model": deployment,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
            },
        }
        await client.chat.completions.create(**body)

    return call


def _http_client(tally: Tally, fault_at: float | None = None) -> Any:
    pending = [fault_at] if fault_at is not None else []

    async def on_request(request: Any) -> None:
        if pending and time.monotonic() >= pending[0]:
            pending.clear()
            request.headers["x-sim-fault"] = "429"

    async def on_response(response: Any) -> None:
        tally.count_response(response.status_code)

    return openai.DefaultAsyncHttpxClient(
        event_hooks={"request": [on_request], "response": [on_response]}
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
        request windows bind (the calls' token mix then says nothing), else charged tokens."""
        if self.bound_by == "rpm":
            return self.tally.useful_calls / len(CALLS) / self.duration
        return self.tally.useful_tokens / conversation_charge(self.profile) / self.duration

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


def _settings(base_url: str, plan: Plan, deployment: str) -> LLMSettings:
    """The guarded client's settings: the deployment's TPM, never its accounting profile."""
    return LLMSettings(
        endpoint=base_url,
        api_key=Secret(API_KEY),
        api_version=API_VERSION,
        deployments={stage: (deployment,) for stage in Stage},
        deployment_tpm={deployment: plan.tpm},
        cache_enabled=False,
        timeout_s=20.0,
        wait_budget_s=10.0,
        total_budget_s=TOTAL_BUDGET_S,
    )


def deployment_name(tpm: int, profile: AccountingProfile) -> str:
    return f"d-{tpm}-{profile.name}"


async def _population(
    base_url: str,
    plan: Plan,
    users: int,
    client: str,
    seed: int,
    profile: AccountingProfile,
    *,
    fault_at: float | None = None,
) -> Tally:
    """Run ``users`` closed-loop users of one client for one cell and return what they did.

    ``fault_at`` (monotonic): the first request sent from then on carries ``x-sim-fault: 429``.
    """
    deployment = deployment_name(plan.tpm, profile)
    start = time.monotonic()
    tally = Tally((start + plan.warmup_s, start + plan.warmup_s + plan.measure_s), profile)
    settings = _settings(base_url, plan, deployment)
    # The guarded client is the one retry layer; the naive one keeps the SDK default (2).
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=_http_client(tally, fault_at),
        max_retries=0 if client == "guarded" else openai.DEFAULT_MAX_RETRIES,
        timeout=settings.timeout_s if client == "guarded" else openai.DEFAULT_TIMEOUT,
    )
    model: GuardedChatModel | None = None
    if client == "guarded":
        model = GuardedChatModel(
            OpenAIChatEndpoint(settings, client=sdk),
            settings=settings,
            estimator=CharEstimator(),
        )
        call = _guarded_call(model, settings, tally)
    else:
        call = _naive_call(sdk, deployment)
    stop = asyncio.Event()
    rng = random.Random(seed)
    tasks = [
        asyncio.create_task(_user(random.Random(rng.random()), call, tally, stop))
        for _ in range(users)
    ]
    try:
        await asyncio.sleep(tally.window[1] - time.monotonic())
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if model is not None:
            await model.close()
        await sdk.close()
    return tally


async def _run_cell(
    simulator: Any,
    plan: Plan,
    users: int,
    clients: tuple[str, ...] = ("guarded", "naive"),
    profile: AccountingProfile = PROFILES["azure"],
) -> list[Row]:
    by_quota, quota_by = quota_bound(profile, plan.tpm)
    loop_bound = users / (len(CALLS) * LATENCY_MS / 1000.0)
    bound, bound_by = (by_quota, quota_by) if by_quota <= loop_bound else (loop_bound, "loop")
    rows = []
    for client in clients:
        # Let requests of the previous population still in sockets land, then start the next
        # population on fresh rate windows.
        await asyncio.sleep(1.0)
        simulator.reset()
        tally = await _population(
            simulator.base_url, plan, users, client, seed=users + plan.tpm, profile=profile
        )
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


async def run_stray(
    simulator: Any, tpm: int, users: int, profile: AccountingProfile, span_s: float
) -> tuple[float, float, Tally]:
    """Charged tokens per second in ``span_s`` before and after one forced 429."""
    plan = Plan(tpm, (users,), warmup_s=span_s + 15.0, measure_s=span_s)
    await asyncio.sleep(1.0)
    simulator.reset()
    started = time.monotonic()
    inject = started + plan.warmup_s
    tally = await _population(
        simulator.base_url,
        plan,
        users,
        "guarded",
        seed=users + tpm,
        profile=profile,
        fault_at=inject,
    )
    before = sum(c for t, c in tally.answers if inject - span_s <= t < inject) / span_s
    after = sum(c for t, c in tally.answers if inject <= t < inject + span_s) / span_s
    return before, after, tally


def packing(profile: AccountingProfile, tpm: int, by: str) -> float:
    """The share of its bound FIFO admission of whole calls can reach: about half a mean call
    of every token window stays unused, and the guard (0.1 s) lengthens every window."""
    window = profile.token_window_s
    if by == "rpm":
        return 10.0 / 10.1
    mean_charge = conversation_charge(profile) / len(CALLS)
    limit = profile.token_capacity(tpm)
    return (1.0 - mean_charge / (2.0 * limit)) * window / (window + 0.1)


def ideal_packing(profile: AccountingProfile, tpm: int, by: str) -> float:
    """The share of its bound no admission order of whole calls can beat
    (``bench.packing_bound``), times window / (window + guard)."""
    if by != "tpm":
        return packing(profile, tpm, by)
    window = profile.token_window_s
    limit = profile.token_capacity(tpm)
    charges = [profile.charge_for(p, m) for _, p, m in CALLS]
    if sum(charges) / len(charges) < 0.05 * limit:
        return window / (window + 0.1)  # small calls: a window packs to within a call or so
    return fullest_mean_window(charges, limit) * window / (window + 0.1)


@dataclass
class LaneRun:
    interactive: Tally
    batch: Tally | None


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
    settings = _settings(simulator.base_url, plan, deployment)
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=simulator.base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=_http_client(interactive),
        max_retries=0,
        timeout=settings.timeout_s,
    )
    model = GuardedChatModel(
        OpenAIChatEndpoint(settings, client=sdk), settings=settings, estimator=CharEstimator()
    )
    stop = asyncio.Event()
    rng = random.Random(tpm)
    tasks = [
        asyncio.create_task(
            _user(
                random.Random(rng.random()),
                _guarded_call(model, settings, interactive),
                interactive,
                stop,
                think_s=think_s,
            )
        )
        for _ in range(interactive_users)
    ]
    if batch is not None:
        tasks += [
            asyncio.create_task(
                _user(
                    random.Random(rng.random()),
                    _guarded_call(model, settings, batch),
                    batch,
                    stop,
                    priority=Priority.BATCH,
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
    simulator = await _start_simulator([tpm], profiles)
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
                warmup_s=15.0,
                measure_s=measure_s,
            )
            both = await run_lanes(
                simulator,
                tpm,
                profile,
                interactive_users=interactive_users,
                think_s=think_s,
                batch_workers=batch_workers,
                warmup_s=15.0,
                measure_s=measure_s,
            )
            assert both.batch is not None
            charge = conversation_charge(profile)
            bound, by = quota_bound(profile, tpm)

            def rate(tally: Tally, by: str = by, charge: int = charge) -> float:
                if by == "rpm":
                    return tally.useful_calls / len(CALLS) / measure_s
                return tally.useful_tokens / charge / measure_s

            interactive_rate = rate(both.interactive)
            batch_rate = rate(both.batch)
            remaining = bound - interactive_rate
            p95_alone = percentile(alone.interactive.latencies, 0.95)
            p95_both = percentile(both.interactive.latencies, 0.95)
            calls = both.interactive.http_calls
            fails = (
                both.interactive.conversations_failed
                + both.batch.conversations_failed
                + alone.interactive.conversations_failed
            )
            print(
                f"{profile.name:<16} | {tpm:>7,} | {p95_alone:13.2f} | {p95_both:16.2f} | "
                f"{p95_both / p95_alone:5.2f} | {interactive_rate:10.3f} | {batch_rate:12.3f} | "
                f"{remaining:9.3f} | {batch_rate / remaining:15.2f} | {fails:>4} | "
                f"{both.interactive.throttled / calls if calls else 0.0:8.2%}",
                flush=True,
            )
    finally:
        await simulator.stop()
    return 0


async def _start_simulator(
    tpms: list[int], profiles: tuple[AccountingProfile, ...] = (PROFILES["azure"],)
) -> Any:
    from devhost.simulator import (
        DeploymentLimits,
        LatencyModel,
        SimulatorConfig,
        start_simulator,
    )

    config = SimulatorConfig(
        api_key=API_KEY,
        deployments={
            deployment_name(tpm, profile): DeploymentLimits(tpm=tpm, accounting=profile.name)
            for tpm in tpms
            for profile in profiles
        },
        latency=LatencyModel(fixed_ms=LATENCY_MS),
    )
    return await start_simulator(config)


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
    charges = ", ".join(f"{p.name} {conversation_charge(p)}" for p in PROFILES.values())
    return (
        f"conversation = {calls} calls; tokens charged per conversation: {charges}; "
        f"simulator latency {LATENCY_MS:.0f} ms. good/s: conversation equivalents per second "
        "(charged tokens of successful calls / the profile's charge per conversation; "
        "successful calls / 3 where the request windows bind); "
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
    simulator = await _start_simulator([p.tpm for p in plans], profiles)
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


async def main_stray(
    tpms: tuple[int, ...], users: int, profiles: tuple[AccountingProfile, ...], span_s: float
) -> int:
    simulator = await _start_simulator(list(tpms), profiles)
    print(
        f"stray 429: guarded, {users} users; charged tokens/s in the {span_s:.0f}s before and "
        "after one forced 429 (x-sim-fault: 429)"
    )
    print("profile          |     TPM | before/s | after/s | after/before | 429s | calls")
    try:
        for profile in profiles:
            for tpm in tpms:
                before, after, tally = await run_stray(simulator, tpm, users, profile, span_s)
                ratio = after / before if before else math.nan
                print(
                    f"{profile.name:<16} | {tpm:>7,} | {before:8.1f} | {after:7.1f} | "
                    f"{ratio:12.3f} | {tally.throttled:>4} | {tally.http_calls:>5}",
                    flush=True,
                )
    finally:
        await simulator.stop()
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
