"""Quota benchmark: the guarded LLM layer against a naive client on the same simulated quota.

    python -m bench.quota            # full run, about 11 minutes
    python -m bench.quota --quick    # a one-minute smoke run

For each quota (10,000 and 210,000 TPM) and each number of closed-loop users (3, 10, 50, 200),
two populations run side by side on two deployments of one simulator with identical limits:

* guarded: ``GuardedChatModel`` (limiter, one retry layer, SDK retries off). A ``RetryLater`` is
  handled the way the pipeline handles it, with the pipeline's own rule
  (``shared.llm.budget.decide_reschedule``): the user waits until the time it returns (the
  delay plus its jitter; the message would be re-sent with that scheduled enqueue time) and
  tries the call again, and gives up when it returns None (the total budget is spent);
  a ``TransientError`` is a redelivery, up to a delivery count of 10.
* naive: a plain ``AsyncAzureOpenAI`` with the SDK's default retries (2, honouring
  ``retry-after``) and no limiter; any exception fails the conversation.

A conversation is three calls, about 780 tokens as charged by Azure (prompt estimate +
``max_tokens``): intent 150+60, response 200+150, critic 180+40. The quota bound is
``TPM / 780`` conversations per minute: it counts *charged* tokens, because that is what the
service meters, not the (smaller) tokens actually generated. With few users the loop itself
bounds throughput (users / (3 calls x latency)); the table's bound is the smaller of the two.

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

from bench.stats import percentile
from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
from shared.config import LLMSettings, Secret
from shared.domain.messages import Stage
from shared.errors import RetryLater, TransientError
from shared.llm.budget import decide_reschedule
from shared.llm.guarded import GuardedChatModel
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
    http_calls: int = 0
    throttled: int = 0
    conversations_done: int = 0
    conversations_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    useful_tokens: float = 0.0
    reschedules: int = 0  # RetryLater waited out and retried (guarded only), the whole cell
    failure_kinds: dict[str, int] = field(default_factory=dict)

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


async def _user(rng: random.Random, call: CallFn, tally: Tally, stop: asyncio.Event) -> None:
    """A closed-loop user: one conversation after another, no think time.

    A successful call's charged tokens count as useful as soon as it returns inside the window
    (a conversation still running when the cell ends has done that work), and are taken back
    if its conversation later fails.
    """
    while not stop.is_set():
        begun = time.monotonic()
        counted = 0
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
                if tally.in_window(time.monotonic()):
                    tally.useful_tokens += prompt + max_tokens
                    counted += prompt + max_tokens
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            tally.useful_tokens -= counted
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


def _http_client(tally: Tally) -> Any:
    async def on_response(response: Any) -> None:
        tally.count_response(response.status_code)

    return openai.DefaultAsyncHttpxClient(event_hooks={"response": [on_response]})


@dataclass
class Row:
    tpm: int
    users: int
    client: str
    tally: Tally
    bound: float
    duration: float

    @property
    def goodput(self) -> float:
        return self.tally.useful_tokens / CHARGE_PER_CONVERSATION / self.duration

    def cells(self) -> list[str]:
        t = self.tally
        conv_rate = t.conversations_done / self.duration
        per_call = t.throttled / t.http_calls if t.http_calls else 0.0
        lat = t.latencies
        p50 = f"{percentile(lat, 0.5):7.1f}" if lat else "      -"
        p95 = f"{percentile(lat, 0.95):7.1f}" if lat else "      -"
        little = self.users / self.goodput if self.goodput > 0 else math.inf
        return [
            f"{self.tpm:>7,}",
            f"{self.users:>5}",
            f"{self.client:<7}",
            f"{self.goodput:6.3f}",
            f"{self.bound:6.3f}",
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
    "    TPM",
    "users",
    "client ",
    "good/s",
    "bound ",
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


async def _population(base_url: str, plan: Plan, users: int, client: str, seed: int) -> Tally:
    """Run ``users`` closed-loop users of one client for one cell and return what they did."""
    deployment = f"d-{plan.tpm}"
    start = time.monotonic()
    tally = Tally((start + plan.warmup_s, start + plan.warmup_s + plan.measure_s))
    settings = LLMSettings(
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
    # The guarded client is the one retry layer; the naive one keeps the SDK default (2).
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=_http_client(tally),
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
    simulator: Any, plan: Plan, users: int, clients: tuple[str, ...] = ("guarded", "naive")
) -> list[Row]:
    quota_bound = plan.tpm / CHARGE_PER_CONVERSATION / 60.0
    loop_bound = users / (len(CALLS) * LATENCY_MS / 1000.0)
    bound = min(quota_bound, loop_bound)
    rows = []
    for client in clients:
        # Let requests of the previous population still in sockets land, then start the next
        # population on fresh rate windows.
        await asyncio.sleep(1.0)
        simulator.reset()
        tally = await _population(simulator.base_url, plan, users, client, seed=users + plan.tpm)
        rows.append(Row(plan.tpm, users, client, tally, bound, plan.measure_s))
    return rows


async def _start_simulator(tpms: list[int]) -> Any:
    from devhost.simulator import (
        DeploymentLimits,
        LatencyModel,
        SimulatorConfig,
        start_simulator,
    )

    config = SimulatorConfig(
        api_key=API_KEY,
        deployments={f"d-{tpm}": DeploymentLimits(tpm=tpm) for tpm in tpms},
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
    charge, calls = CHARGE_PER_CONVERSATION, len(CALLS)
    return (
        f"conversation = {calls} calls, {charge} tokens charged; "
        f"simulator latency {LATENCY_MS:.0f} ms. good/s: conversation equivalents per second "
        f"(charged tokens of successful calls / {charge}); "
        f"bound: min(TPM/{charge}/60, users/({calls} x latency)); "
        "P50/P95: conversations completed inside the window; N/X: users / goodput (Little's law)"
    )


async def main(
    quick: bool,
    *,
    tpm: int | None = None,
    users: int | None = None,
    clients: tuple[str, ...] = ("guarded", "naive"),
) -> int:
    plans = select_plans(quick, tpm, users)
    simulator = await _start_simulator([p.tpm for p in plans])
    print(legend())
    print(" | ".join(HEADER))
    rows: list[Row] = []
    try:
        for plan in plans:
            print(
                f"-- {plan.tpm:,} TPM: warm-up {plan.warmup_s:.0f}s, window {plan.measure_s:.0f}s"
            )
            for count in plan.users:
                for row in await _run_cell(simulator, plan, count, clients):
                    rows.append(row)
                    print(" | ".join(row.cells()), flush=True)
    finally:
        await simulator.stop()
    for row in rows:
        if row.tally.failure_kinds:
            kinds = row.tally.failure_kinds
            print(f"{row.tpm:,} TPM, {row.users} users, {row.client}: failures {kinds}")
    return 0


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--tpm", type=int, help="run only this quota")
    parser.add_argument("--users", type=int, help="run only this number of users")
    parser.add_argument(
        "--client", choices=("guarded", "naive"), action="append", help="run only this client"
    )
    args = parser.parse_args()
    try:
        select_plans(args.quick, args.tpm, args.users)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.ERROR)
    clients = tuple(args.client) if args.client else ("guarded", "naive")
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(
            asyncio.run(main(args.quick, tpm=args.tpm, users=args.users, clients=clients))
        )


if __name__ == "__main__":
    run()
