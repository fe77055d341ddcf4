"""Several instances sharing one deployment through the quota ledger, in simulated time.

    python -m bench.handover_sim                 # the burst bench's shape, three seeds
    python -m bench.handover_sim --seeds 1 --conversations 400 --tpm 200000

The multi-instance part of ``bench.burst`` without processes or wall time, so a change to the
hand-over can be measured in seconds and the same figures come out on every machine. What runs is
the production code: per instance a ``GuardedChatModel`` (its limiter, slot picker, wait budget,
``RetryLater``) and a ``ShareCoordinator``, all sharing one in-memory ledger (the semantics of
``QuotaLedger``: each heartbeat is one atomic step). What they call is the simulator's own rate
limiter (``devhost.simulator.ratelimit.DeploymentLimiter``, Azure's accounting: prompt +
``max_tokens`` per call, a 10 s token window, 1 s and 10 s request windows), answering after a
fixed latency.

The pipeline is the burst bench's: ``--conversations`` requests land on ``intent`` at once; each
answer goes to ``response`` (another deployment, modelled as a fixed delay), then to ``critic``;
a share of critic reviews asks for a revision (back through response to critic), another share
escalates. Intent, critic and escalation call the shared deployment, each function on its own
instances with ``--concurrency`` calls in flight, as Service Bus triggers do. Instances come and
go on a fixed schedule (a second critic and a second intent instance join and leave, one of them
killed without leaving), as the scaler makes them.

Printed per seed: the time to drain, quota use while draining (the server's charged tokens over
TPM x time, whole and middle 80 %), and the server's 429s as a share of calls.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from bench.quota_load import _messages
from devhost.simulator.accounting import AZURE
from devhost.simulator.ratelimit import DeploymentLimiter
from shared.config import LLMSettings, Secret
from shared.domain.messages import Stage
from shared.errors import RetryLater
from shared.llm.endpoint import EndpointCall, EndpointReply, EndpointThrottled, RateLimitInfo
from shared.llm.guarded import GuardedChatModel
from shared.llm.ledger import Lease, ShareCoordinator
from shared.llm.limiter import QuotaLimiter
from shared.ports import ChatRequest

SHARED = "mini"
SIZES = {  # prompt tokens, max_tokens: the agents' calls (shared/agents)
    Stage.INTENT: (400, 200),
    Stage.CRITIC: (500, 250),
    Stage.ESCALATION: (450, 300),
}
RESPONSE_S = 2.0
REVISE, ESCALATE = 0.3, 0.14
# (time, function, instance, "join" | "leave" | "crash"): the scaler's moves in the burst bench.
SCHEDULE = (
    (60.0, Stage.CRITIC, 1, "join"),
    (75.0, Stage.INTENT, 1, "join"),
    (120.0, Stage.CRITIC, 1, "crash"),
    (150.0, Stage.INTENT, 1, "leave"),
)


class VirtualClock:
    """Simulated time for every instance: ``sleep`` parks the caller until the driver moves
    time to its wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), future))
        await future

    async def run(self, until: float, done: asyncio.Event) -> None:
        """Move time from one wake-up to the next, letting every woken task run to its next
        wait, until ``done`` is set or ``until``."""
        loop = asyncio.get_running_loop()
        await _settle(loop)
        while not done.is_set() and self._timers and self._timers[0][0] <= until:
            at, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            if not future.cancelled():
                future.set_result(None)
            await _settle(loop)


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Yield until no task is ready to run: every task woken at this moment has reached its next
    wait. asyncio has no public test for that, so this reads the loop's ready queue."""
    for _ in range(10_000):
        await asyncio.sleep(0)
        if not loop._ready:  # type: ignore[attr-defined]
            return


class MemoryLedger:
    """``QuotaLedger`` in memory: one dict per deployment, each heartbeat one step."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[Lease, float]]] = {}
        """Per deployment, each instance's lease (as renewed) and its expiry."""

    async def heartbeat(
        self, deployment: str, instance_id: str, lease: Lease, *, now: float, ttl_s: float
    ) -> dict[str, Lease]:
        rows = self.rows.setdefault(deployment, {})
        rows[instance_id] = (replace(lease, renewed=now), now + ttl_s)
        for name in [n for n, (_, expires) in rows.items() if expires <= now]:
            del rows[name]
        return {name: row for name, (row, _) in rows.items()}

    async def leave(self, deployment: str, instance_id: str) -> None:
        self.rows.get(deployment, {}).pop(instance_id, None)

    async def close(self) -> None:
        pass


class SimEndpoint:
    """The shared deployment: the simulator's limiter, answering after ``latency_s``."""

    def __init__(
        self, server: DeploymentLimiter, clock: VirtualClock, tally: Tally, rng: random.Random
    ) -> None:
        self._server = server
        self._rng = rng
        self._clock = clock
        self._tally = tally

    async def complete(self, call: EndpointCall) -> EndpointReply:
        prompt = SIZES[Stage(call.stage)][0]
        decision = self._server.try_acquire(prompt + call.max_tokens)
        rate = RateLimitInfo(decision.remaining_tokens, decision.remaining_requests, None)
        self._tally.calls += 1
        if not decision.admitted:
            self._tally.throttled += 1
            raise EndpointThrottled(
                "429",
                rate=RateLimitInfo(
                    decision.remaining_tokens,
                    decision.remaining_requests,
                    decision.retry_after_ms / 1000.0,
                ),
            )
        self._tally.charged.append((self._clock.now, prompt + call.max_tokens))
        await self._clock.sleep(self._tally.latency_s)
        completion = int(call.max_tokens * self._rng.uniform(0.3, 0.9))
        return EndpointReply("{}", "stop", prompt, completion, rate=rate)

    async def close(self) -> None:
        pass


@dataclass
class Tally:
    latency_s: float
    calls: int = 0
    throttled: int = 0
    charged: list[tuple[float, int]] = field(default_factory=list)
    finished: int = 0
    drained_at: float | None = None


@dataclass
class Instance:
    model: GuardedChatModel
    shares: ShareCoordinator
    workers: list[asyncio.Task[None]]


class Pipeline:
    """The queues and the instances of the three functions that call the shared deployment."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.args = args
        self.rng = random.Random(seed)
        self.clock = VirtualClock()
        self.tally = Tally(args.latency_ms / 1000.0)
        self.server = DeploymentLimiter(
            tpm=args.tpm, rpm=6 * args.tpm // 1000, clock=self.clock.monotonic, profile=AZURE
        )
        self.ledger = MemoryLedger()
        self.queues: dict[Stage, list[tuple[float, int, int]]] = {s: [] for s in SIZES}
        self.order = itertools.count()
        self.instances: dict[tuple[Stage, int], Instance] = {}
        self.done = asyncio.Event()
        self.failed = 0

    def post(self, stage: Stage, conversation: int, at: float) -> None:
        heapq.heappush(self.queues[stage], (at, next(self.order), conversation))

    def start(self, stage: Stage, index: int) -> None:
        settings = LLMSettings(
            endpoint="http://sim",
            api_key=Secret("sim"),
            api_version="2024-10-21",
            deployments={s: (SHARED,) for s in Stage},
            deployment_tpm={SHARED: self.args.tpm},
            cache_enabled=False,
            wait_budget_s=10.0,
        )
        limiter = QuotaLimiter(settings.deployment_tpm)
        shares = ShareCoordinator(
            self.ledger, limiter, instance_id=f"{stage.value}-{index}", clock=self.clock
        )
        model = GuardedChatModel(
            SimEndpoint(self.server, self.clock, self.tally, random.Random(self.rng.random())),
            settings=settings,
            limiter=limiter,
            shares=shares,
            clock=self.clock,
            rng=random.Random(self.rng.random()),
        )
        workers = [
            asyncio.create_task(self.work(stage, model)) for _ in range(self.args.concurrency)
        ]
        self.instances[stage, index] = Instance(model, shares, workers)

    async def stop(self, stage: Stage, index: int, *, graceful: bool) -> None:
        instance = self.instances.pop((stage, index))
        for worker in instance.workers:
            worker.cancel()
        if graceful:
            await instance.shares.close()

    async def work(self, stage: Stage, model: GuardedChatModel) -> None:
        prompt, max_tokens = SIZES[stage]
        messages = _messages(random.Random(prompt), prompt)
        while True:
            queue = self.queues[stage]
            if not queue or queue[0][0] > self.clock.now:
                await self.clock.sleep(0.2)
                continue
            _, _, conversation = heapq.heappop(queue)
            request = ChatRequest(stage.value, messages, "a", None, max_tokens)
            try:
                await model.complete(request)
            except RetryLater as exc:
                self.post(stage, conversation, self.clock.now + exc.delay_s)
                continue
            except asyncio.CancelledError:
                self.post(stage, conversation, self.clock.now)  # the lock lapses: redelivered
                raise
            except Exception:
                self.failed += 1
                self.finish()
                continue
            self.route(stage, conversation)

    def route(self, stage: Stage, conversation: int) -> None:
        later = self.clock.now + RESPONSE_S
        if stage is Stage.INTENT:
            self.post(Stage.CRITIC, conversation, later)
        elif stage is Stage.CRITIC:
            draw = self.rng.random()
            if draw < REVISE:
                self.post(Stage.CRITIC, conversation, later)
            elif draw < REVISE + ESCALATE:
                self.post(Stage.ESCALATION, conversation, self.clock.now)
            else:
                self.finish()
        else:
            self.finish()

    def finish(self) -> None:
        self.tally.finished += 1
        if self.tally.finished >= self.args.conversations:
            self.tally.drained_at = self.clock.now
            self.done.set()

    async def run(self) -> Mapping[str, float]:
        for conversation in range(self.args.conversations):
            self.post(Stage.INTENT, conversation, 0.0)
        for stage in SIZES:
            self.start(stage, 0)
        moves = asyncio.create_task(self.moves())
        await self.clock.run(self.args.timeout, self.done)
        moves.cancel()
        for stage, index in list(self.instances):
            await self.stop(stage, index, graceful=True)
        return self.figures()

    async def moves(self) -> None:
        for at, stage, index, move in SCHEDULE:
            await self.clock.sleep(at - self.clock.now)
            if move == "join":
                self.start(stage, index)
            elif (stage, index) in self.instances:
                await self.stop(stage, index, graceful=move == "leave")

    def figures(self) -> Mapping[str, float]:
        end = self.tally.drained_at or self.clock.now
        per_s = float(self.args.tpm) / 60.0

        def use(start: float, stop: float) -> float:
            tokens = sum(n for at, n in self.tally.charged if start <= at < stop)
            return tokens / (per_s * max(stop - start, 1e-9))

        calls = max(self.tally.calls, 1)
        return {
            "drained_s": end if self.tally.drained_at is not None else float("nan"),
            "finished": float(self.tally.finished),
            "failed": float(self.failed),
            "use": use(0.0, end),
            "use_middle": use(0.1 * end, 0.9 * end),
            "throttled_share": self.tally.throttled / calls,
            "calls": float(self.tally.calls),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--tpm", type=int, default=200_000)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200.0, help="simulated seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(
        f"{args.conversations} conversations, {args.tpm:,} TPM (Azure accounting), "
        f"{args.latency_ms:g} ms per call, {args.concurrency} calls per instance"
    )
    print("seed | drained s | final | failed | use  | middle 80 % | 429s")
    rows = []
    for seed in range(1, args.seeds + 1):
        row = asyncio.run(Pipeline(args, seed).run())
        rows.append(row)
        print(
            f"{seed:>4} | {row['drained_s']:9.1f} | {row['finished']:5.0f} | {row['failed']:6.0f} "
            f"| {row['use']:.2f} | {row['use_middle']:11.2f} | {row['throttled_share']:.1%} "
            f"of {row['calls']:.0f}",
            flush=True,
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
