"""The quota benchmark's simulated users and deployment (``bench.quota``).

A user runs conversations of ``CALLS`` through a call function (the guarded client, with the
pipeline's reschedule rule, or a naive SDK client) and a ``Tally`` counts what the simulator
charged for them inside the measuring window. The simulator serves one deployment per quota and
accounting profile.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import openai

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


ARRIVAL_PROFILES: dict[str, AccountingProfile] = {
    name: p for name, p in PROFILES.items() if not p.charged_on_answer
}
"""The profiles that charge a call on arrival, by its size: a call's charge and a
conversation's bound are known from the call alone, before it is answered. The replay in
simulated time (``bench.quota_sim``) and the capacity model take these. A server that charges
usage (``usage-minute``) charges what each answer used; ``bench.quota`` measures it with the
charge read from each answer (``Tally.charge``) and the bound from what the answers used."""


def conversation_charge(profile: AccountingProfile) -> int:
    """What ``profile`` charges for one conversation on arrival; for a profile that charges
    usage, the most it can charge (prompt + ``max_tokens`` of every call)."""
    if profile.charged_on_answer:
        return sum(p + m for _, p, m in CALLS)
    return sum(profile.charge_for(p, m) for _, p, m in CALLS)


def deployment_rpm(tpm: int) -> int:
    """The requests per minute the simulator gives a deployment of ``tpm`` (Azure's rule)."""
    from devhost.simulator import DeploymentLimits

    return DeploymentLimits(tpm=tpm).effective_rpm


def quota_bound(
    profile: AccountingProfile, tpm: int, charge: float | None = None
) -> tuple[float, str]:
    """Conversations per second the profile's windows allow, and which window binds;
    ``charge`` is what a conversation was charged (``Tally.conversation_charge``) where the
    profile charges usage, by default what it charges on arrival."""
    charge = conversation_charge(profile) if charge is None else charge
    by_tokens = tpm / charge / 60.0
    rpm = deployment_rpm(tpm)
    per_call = min(allowed / window for window, allowed in profile.request_windows(tpm, rpm))
    by_requests = per_call / len(CALLS)
    return (by_tokens, "tpm") if by_tokens <= by_requests else (by_requests, "rpm")


def loop_bound(users: int) -> float:
    """Conversations per second ``users`` closed-loop users can make with no wait at all."""
    return users / (len(CALLS) * LATENCY_MS / 1000.0)


def cell_bound(
    profile: AccountingProfile, tpm: int, users: int, charge: float | None = None
) -> tuple[float, str]:
    """A cell's bound in conversations per second, and what sets it: the quota's windows
    (``quota_bound``: "tpm" or "rpm") or the users' own loop ("loop")."""
    by_quota, quota_by = quota_bound(profile, tpm, charge)
    loop = loop_bound(users)
    return (by_quota, quota_by) if by_quota <= loop else (loop, "loop")


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
    kept: list[tuple[float, int]] = field(default_factory=list)
    """(arrival at the server, charged tokens) of every successful call whose conversation
    did not fail, in the window or not."""

    def held(self, span_s: float, *, per_call: bool = False) -> float:
        """What the kept calls held of the server's window, per second of the measuring
        window: each call counts (its charged tokens, or 1 with ``per_call``) for the share of
        its ``span_s`` in the server's window from its arrival that falls inside the measuring
        window. The mean of the server's own window contents over the measuring window, divided
        by the window: it cannot exceed what the server allows, and it has no edge effect of a
        whole call counted in or out (a call is a few per cent of a short window's total)."""
        start, end = self.window
        inside = sum(
            (1 if per_call else charge) * max(0.0, min(at + span_s, end) - max(at, start))
            for at, charge in self.kept
        )
        return inside / span_s / (end - start)

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t <= self.window[1]

    def charge(self, prompt: int, max_tokens: int, used: int, answered: float) -> Charged:
        """When the server charged a call answered at ``answered`` and how much: on arrival
        (a fixed latency before the answer) by its size, or, where the profile charges usage,
        on the answer by the tokens it used (``used``, the answer's ``total_tokens``)."""
        if self.profile.charged_on_answer:
            return answered, used
        return answered - LATENCY_MS / 1000.0, self.profile.charge_for(prompt, max_tokens)

    def conversation_charge(self) -> float:
        """What the server charged a conversation: the profile's charge on arrival or, where
        it charges usage, the mean charge of the answered calls times the calls of one."""
        if not self.profile.charged_on_answer or not self.answers:
            return float(conversation_charge(self.profile))
        return sum(c for _, c in self.answers) / len(self.answers) * len(CALLS)

    def count_response(self, status: int) -> None:
        if self.in_window(time.monotonic()):
            self.http_calls += 1
            self.throttled += status == 429

    def failed(self, exc: BaseException) -> None:
        self.conversations_failed += 1
        kind = type(exc).__name__
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1


def around(
    tally: Tally, at: float, span_s: float, *, per_call: bool = False
) -> tuple[float, float]:
    """Charged tokens per second of the calls answered in the ``span_s`` before ``at`` and in
    the ``span_s`` from it on: the stray-429 scenario's two figures. With ``per_call``, calls
    per second instead: where the request windows bind (``stray_per_call``) the server admits
    a steady number of calls, and their tokens say only which calls of the conversation the
    span happened to hold."""

    def rate(start: float, end: float) -> float:
        held = [c for t, c in tally.answers if start <= t < end]
        return (len(held) if per_call else sum(held)) / span_s

    return rate(at - span_s, at), rate(at, at + span_s)


def stray_per_call(profile: AccountingProfile, tpm: int) -> bool:
    """Whether the stray-429 scenario counts calls rather than tokens: where the profile's
    request windows bind at ``tpm`` (``quota_bound``), as ``bench.quota``'s goodput does."""
    return quota_bound(profile, tpm)[1] == "rpm"


Charged = tuple[float, int]
"""(when the server charged a call, the tokens it charged)."""
CallFn = Callable[[ChatRequest], Awaitable[int]]
"""Makes one call and returns the tokens its answer says it used (``total_tokens``)."""


async def run_user(
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
        await run_conversations(rng, call, tally, stop, think_s)


async def run_conversations(
    rng: random.Random, call: CallFn, tally: Tally, stop: asyncio.Event, think_s: float
) -> None:
    while not stop.is_set():
        if think_s > 0:
            await asyncio.sleep(rng.uniform(0.0, 2.0 * think_s))
        begun = time.monotonic()
        counted = 0
        calls_counted = 0
        mine: list[tuple[float, int]] = []
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
                used = await call(request)
                answered = time.monotonic()
                mine.append(tally.charge(prompt, max_tokens, used, answered))
                charged = mine[-1][1]
                tally.answers.append((answered, charged))
                tally.kept.append(mine[-1])
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
            for made in mine:
                tally.kept.remove(made)
            if tally.in_window(time.monotonic()):
                tally.failed(exc)
            continue
        done = time.monotonic()
        if tally.in_window(done):
            tally.conversations_done += 1
            tally.latencies.append(done - begun)


def guarded_call(model: GuardedChatModel, settings: LLMSettings, tally: Tally) -> CallFn:
    async def call(request: ChatRequest) -> int:
        waited = 0.0
        deliveries = 0
        while True:
            try:
                return (await model.complete(request)).total_tokens
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


def naive_call(client: openai.AsyncAzureOpenAI, deployment: str) -> CallFn:
    async def call(request: ChatRequest) -> int:
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
        reply = await client.chat.completions.create(**body)
        return reply.usage.total_tokens if reply.usage is not None else 0

    return call


def http_client(tally: Tally, fault_at: float | None = None) -> Any:
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


def guarded_settings(base_url: str, plan: Plan, deployment: str) -> LLMSettings:
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


async def population(
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
    settings = guarded_settings(base_url, plan, deployment)
    # The guarded client is the one retry layer; the naive one keeps the SDK default (2).
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=base_url,
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=http_client(tally, fault_at),
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
        call = guarded_call(model, settings, tally)
    else:
        call = naive_call(sdk, deployment)
    stop = asyncio.Event()
    rng = random.Random(seed)
    tasks = [
        asyncio.create_task(run_user(random.Random(rng.random()), call, tally, stop))
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


async def start_bench_simulator(
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
