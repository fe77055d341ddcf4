"""Quota benchmark: the guarded LLM layer against a naive client on the same simulated quota.

    python -m bench.quota            # full run, about 6 minutes
    python -m bench.quota --quick    # a one-minute smoke run

For each quota (10,000 and 210,000 TPM) and each number of closed-loop users (3, 10, 50, 200),
two populations run side by side on two deployments of one simulator with identical limits:

* guarded: ``GuardedChatModel`` (limiter, one retry layer, SDK retries off). A ``RetryLater`` is
  handled the way the pipeline handles it: the user waits the delay (the message would be
  re-sent with a scheduled enqueue time) and tries the call again, until the total budget;
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
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from shared.adapters.openai_chat import OpenAIChatEndpoint
from shared.config import LLMSettings, Secret
from shared.errors import RetryLater, TransientError
from shared.llm.guarded import GuardedChatModel
from shared.llm.metrics import CountingMetrics
from shared.llm.tokens import CharEstimator
from shared.messages import Stage
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
    Plan(10_000, (3, 10, 50, 200), warmup_s=10.0, measure_s=45.0),
    Plan(210_000, (3, 10, 50, 200), warmup_s=5.0, measure_s=20.0),
)
QUICK = (
    Plan(10_000, (3, 50), warmup_s=5.0, measure_s=15.0),
    Plan(210_000, (10, 200), warmup_s=3.0, measure_s=10.0),
)


def _text(rng: random.Random, tokens: int) -> str:
    """Filler of about ``tokens`` estimated tokens (chars/4), unique so no cache can help."""
    words: list[str] = [f"#{rng.getrandbits(48):x}"]
    while sum(len(w) + 1 for w in words) < tokens * 4:
        words.append(rng.choice(WORDS))
    return " ".join(words)[: tokens * 4]


def _messages(rng: random.Random, prompt_tokens: int) -> list[dict[str, str]]:
    framing = 3 + 2 * 4  # reply priming + two messages' overhead
    system = "Answer as JSON."
    body = prompt_tokens - framing - math.ceil(len(system) / 4)
    return [{"role": "system", "content": system}, {"role": "user", "content": _text(rng, body)}]


@dataclass
class Tally:
    """What one population did during one cell."""

    started: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)
    http_calls: int = 0
    throttled: int = 0
    conversations_done: int = 0
    conversations_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    useful_tokens: float = 0.0
    reschedules: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t <= self.window[1]

    def count_response(self, status: int) -> None:
        self.http_calls += 1
        self.throttled += status == 429

    def failed(self, exc: BaseException) -> None:
        self.conversations_failed += 1
        kind = type(exc).__name__
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1


CallFn = Callable[[ChatRequest], Awaitable[None]]


async def _user(rng: random.Random, call: CallFn, tally: Tally, stop: asyncio.Event) -> None:
    """A closed-loop user: one conversation after another, no think time."""
    while not stop.is_set():
        begun = time.monotonic()
        charged: list[tuple[float, int]] = []
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
                charged.append((time.monotonic(), prompt + max_tokens))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if tally.in_window(time.monotonic()):
                tally.failed(exc)
            continue
        done = time.monotonic()
        tally.useful_tokens += sum(tokens for t, tokens in charged if tally.in_window(t))
        if tally.in_window(done):
            tally.conversations_done += 1
            tally.latencies.append(done - begun)


def _guarded_call(model: GuardedChatModel, tally: Tally) -> CallFn:
    async def call(request: ChatRequest) -> None:
        first = time.monotonic()
        deliveries = 0
        while True:
            try:
                await model.complete(request)
                return
            except RetryLater as exc:
                # The pipeline re-sends the message at now + delay; the user waits for it.
                if time.monotonic() + exc.delay_s - first > TOTAL_BUDGET_S:
                    raise
                tally.reschedules += 1
                await asyncio.sleep(exc.delay_s)
            except TransientError:
                deliveries += 1  # abandoned and redelivered by the broker
                if deliveries >= MAX_DELIVERIES:
                    raise

    return call


def _naive_call(client: openai.AsyncAzureOpenAI, deployment: str) -> CallFn:
    async def call(request: ChatRequest) -> None:
        await client.chat.completions.create(
            model=deployment,
            messages=request.messages,  # type: ignore[arg-type]
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
            },
        )

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

    def cells(self) -> list[str]:
        t = self.tally
        goodput = t.useful_tokens / CHARGE_PER_CONVERSATION / self.duration
        conv_rate = t.conversations_done / self.duration
        per_call = t.throttled / t.http_calls if t.http_calls else 0.0
        lat = sorted(t.latencies)
        p50 = statistics.median(lat) if lat else math.nan
        p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else math.nan
        return [
            f"{self.tpm:>7,}",
            f"{self.users:>5}",
            f"{self.client:<7}",
            f"{goodput:6.3f}",
            f"{self.bound:6.3f}",
            f"{goodput / self.bound:5.2f}",
            f"{conv_rate:6.3f}",
            f"{per_call:7.2%}",
            f"{t.http_calls:>6}",
            f"{t.conversations_failed:>5}",
            f"{p50:7.1f}",
            f"{p95:7.1f}",
            f"{t.reschedules:>6}",
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
    " P50 s ",
    " P95 s ",
    "resched",
]


async def _run_cell(base_url: str, plan: Plan, users: int) -> tuple[Row, Row]:
    guarded_d, naive_d = f"guarded-{plan.tpm}", f"naive-{plan.tpm}"
    start = time.monotonic()
    window = (start + plan.warmup_s, start + plan.warmup_s + plan.measure_s)
    tallies = {"guarded": Tally(start, window), "naive": Tally(start, window)}

    settings = LLMSettings(
        endpoint=base_url,
        api_key=Secret(API_KEY),
        api_version=API_VERSION,
        deployments={stage: (guarded_d,) for stage in Stage},
        deployment_tpm={guarded_d: plan.tpm},
        cache_enabled=False,
        timeout_s=20.0,
        wait_budget_s=10.0,
        total_budget_s=TOTAL_BUDGET_S,
    )
    sdk_guarded = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        max_retries=0,
        timeout=settings.timeout_s,
        http_client=_http_client(tallies["guarded"]),
    )
    model = GuardedChatModel(
        OpenAIChatEndpoint(settings, client=sdk_guarded),
        settings=settings,
        metrics=CountingMetrics(),
        estimator=CharEstimator(),
    )
    naive = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=_http_client(tallies["naive"]),
    )
    stop = asyncio.Event()
    rng = random.Random(users * 7919 + plan.tpm)
    tasks = [
        asyncio.create_task(
            _user(
                random.Random(rng.random()),
                _guarded_call(model, tallies["guarded"]),
                tallies["guarded"],
                stop,
            )
        )
        for _ in range(users)
    ] + [
        asyncio.create_task(
            _user(random.Random(rng.random()), _naive_call(naive, naive_d), tallies["naive"], stop)
        )
        for _ in range(users if not __import__("os").environ.get("NO_NAIVE") else 0)
    ]
    try:
        await asyncio.sleep(window[1] - time.monotonic())
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await model.close()
        await sdk_guarded.close()
        await naive.close()
    quota_bound = plan.tpm / CHARGE_PER_CONVERSATION / 60.0
    loop_bound = users / (len(CALLS) * LATENCY_MS / 1000.0)
    bound = min(quota_bound, loop_bound)
    return (
        Row(plan.tpm, users, "guarded", tallies["guarded"], bound, plan.measure_s),
        Row(plan.tpm, users, "naive", tallies["naive"], bound, plan.measure_s),
    )


async def _start_simulator(tpms: list[int]) -> Any:
    from devhost.simulator import (
        DeploymentLimits,
        LatencyModel,
        SimulatorConfig,
        start_simulator,
    )

    deployments = {}
    for tpm in tpms:
        deployments[f"guarded-{tpm}"] = DeploymentLimits(tpm=tpm)
        deployments[f"naive-{tpm}"] = DeploymentLimits(tpm=tpm)
    config = SimulatorConfig(
        api_key=API_KEY,
        deployments=deployments,
        latency=LatencyModel(fixed_ms=LATENCY_MS),
    )
    return await start_simulator(config)


async def main(quick: bool) -> int:
    plans = QUICK if quick else FULL
    simulator = await _start_simulator([p.tpm for p in plans])
    print(
        f"conversation = {len(CALLS)} calls, {CHARGE_PER_CONVERSATION} tokens charged; "
        f"simulator latency {LATENCY_MS:.0f} ms; rates per second; latencies of conversations "
        "completed in the window"
    )
    print(" | ".join(HEADER))
    rows: list[Row] = []
    try:
        for plan in plans:
            for users in plan.users:
                pair = await _run_cell(simulator.base_url, plan, users)
                for row in pair:
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(main(args.quick)))


if __name__ == "__main__":
    run()
