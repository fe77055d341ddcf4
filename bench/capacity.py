"""Capacity model: users -> conversations/s -> TPM per deployment -> instances -> $ per hour.

    python -m bench.capacity --quota-table out.txt [--quota-table more.txt]   # check the model
    python -m bench.capacity --lanes-table lanes.txt                          # ... --lanes
    python -m bench.capacity --stray-table stray.txt                          # ... --stray
    python -m bench.capacity --measure 20                                     # stage figures only

1. **Stage figures, measured.** The four real agents run in-process against the simulator (its
   latency model, ample quota) on the first ``--measure`` demo requests, routed exactly as the
   pipeline routes them (``shared.domain.routing.next_step``). Per stage: calls per
   conversation, prompt and completion tokens, ``max_tokens``, and call latency.

2. **The model, checked against ``bench.quota``** (``bench.capacity_check``). For each cell
   of a ``bench.quota`` table (its printed output, passed with ``--quota-table``) the model
   predicts goodput and P95 and prints prediction / measurement:

   * goodput, from first principles: X = min(loop, quota x packing): loop = users / (calls x
     latency); quota = the profile's bound (tokens or requests); packing = what FIFO admission
     of whole calls can fill of a window (1 - mean charge / (2 x window limit)) times window /
     (window + guard);
   * goodput and the P95 of a conversation from the queue (``bench.quota_sim``): the cell
     replayed in simulated time, the guarded client's admission rules in front of the
     profile's windows, over ``--queue-seeds`` seeds. A conversation's time is not users / X
     (Little's law gives only the mean): it depends on the order calls are admitted in and on
     which calls are sent away to come back later, and the cell counts only conversations that
     finish inside its window. The queue measures what the cell measures, so a cell with few
     completed conversations (n, printed beside) is checked on what it saw;
   * for each row of a ``bench.quota --lanes`` table (``--lanes-table``), the replay's
     interactive P95 alone and beside the batch workers, and what batch takes of the room
     interactive leaves;
   * for each row of a ``bench.quota --stray`` table (``--stray-table``), the replay's charged
     tokens per second after one forced 429 over those before it (the simulator's forced 429:
     nothing charged, its window's figures, a retry-after of at least one second).

3. **On paper**, for the seed's 10,000 daily users and for 10 million: peak conversations per
   second, TPM per stage deployment (charged as Azure charges: prompt + ``max_tokens``), how
   many standard deployments or regions that takes at a regional TPM quota, or how many PTUs,
   the Function instances per stage (Little's law over call latency and
   ``maxConcurrentCalls``), and $ per hour. Every assumption is a flag and is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.capacity_check import (
    print_checks,
    print_lane_checks,
    print_stray_checks,
    read_lanes_table,
    read_quota_table,
    read_stray_table,
)
from bench.stats import percentile

if TYPE_CHECKING:
    from shared.domain.agent_input import AgentInput
    from shared.llm.guarded import GuardedChatModel
    from shared.ports import ChatRequest, ChatResult

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "devhost" / "data" / "demo_requests.jsonl"
STAGES = ("intent", "response", "critic", "escalation")


# -- 1. stage figures -------------------------------------------------------------------------


@dataclass
class StageFigures:
    calls: int = 0
    prompt: list[int] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)
    max_tokens: list[int] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    def mean(self, values: list[float] | list[int]) -> float:
        return sum(values) / len(values) if values else 0.0


@dataclass
class Measured:
    conversations: int
    stages: dict[str, StageFigures]
    outcomes: dict[str, int]

    def per_conversation(self, stage: str) -> float:
        return self.stages[stage].calls / self.conversations if self.conversations else 0.0

    def charged_tokens(self, stage: str) -> float:
        """Azure's charge (prompt + max_tokens) per conversation for ``stage``."""
        s = self.stages[stage]
        return self.per_conversation(stage) * (s.mean(s.prompt) + s.mean(s.max_tokens))

    def used_tokens(self, stage: str) -> tuple[float, float]:
        """(prompt, completion) tokens per conversation for ``stage``."""
        s = self.stages[stage]
        n = self.per_conversation(stage)
        return n * s.mean(s.prompt), n * s.mean(s.completion)


async def measure_stages(count: int) -> Measured:
    """Run ``count`` demo requests through the four agents against the simulator."""
    from devhost.simulator import DeploymentLimits, SimulatorConfig, start_simulator
    from shared.adapters.azure.openai_chat import OpenAIChatEndpoint
    from shared.config import LLMSettings, Secret
    from shared.domain.agent_input import AgentInput
    from shared.domain.messages import Stage
    from shared.llm.guarded import GuardedChatModel

    figures = {stage: StageFigures() for stage in STAGES}
    outcomes: dict[str, int] = defaultdict(int)
    simulator = await start_simulator(
        SimulatorConfig(api_key="cap", default_limits=DeploymentLimits(tpm=100_000_000))
    )
    settings = LLMSettings(
        endpoint=simulator.base_url,
        api_key=Secret("cap"),
        api_version="2024-10-21",
        deployments={stage: ("cap",) for stage in Stage},
        deployment_tpm={"cap": 100_000_000},
        cache_enabled=False,
    )
    guarded = GuardedChatModel(OpenAIChatEndpoint(settings), settings=settings)
    llm = _Recording(guarded, figures)
    lines = DEMO.read_text(encoding="utf-8").splitlines()[:count]
    try:
        for i, line in enumerate(lines):
            body = json.loads(line)
            inp = AgentInput(
                conversation_id=f"c-{i}",
                customer_id=body["customerId"],
                channel=body["channel"],
                text=body["text"],
            )
            outcomes[await _converse(inp, llm)] += 1
    finally:
        await guarded.close()
        await simulator.stop()
    return Measured(len(lines), figures, dict(outcomes))


class _Recording:
    """The chat model the agents call: the guarded endpoint, recording each call's figures."""

    def __init__(self, guarded: GuardedChatModel, figures: dict[str, StageFigures]) -> None:
        self.guarded = guarded
        self.figures = figures

    async def complete(self, request: ChatRequest) -> ChatResult:
        started = time.monotonic()
        result = await self.guarded.complete(request)
        stage = self.figures[request.stage]
        stage.calls += 1
        stage.prompt.append(result.prompt_tokens)
        stage.completion.append(result.completion_tokens)
        stage.max_tokens.append(request.max_tokens)
        stage.latency.append(time.monotonic() - started)
        return result

    async def close(self) -> None:
        pass


async def _converse(inp: AgentInput, llm: _Recording) -> str:
    """One conversation through the agents, routed as the pipeline routes it; its outcome."""
    from shared.agents.critic import review_draft
    from shared.agents.escalation import route_to_human
    from shared.agents.intent import classify_intent
    from shared.agents.response import draft_reply
    from shared.domain.agent_input import Draft
    from shared.domain.messages import Stage
    from shared.domain.routing import Finish, next_step

    stage, revision = Stage.INTENT, 0
    while True:
        if stage is Stage.INTENT:
            run: Any = await classify_intent(inp, llm=llm)
            inp = _replace(inp, intent=run.result)
        elif stage is Stage.RESPONSE:
            run = await draft_reply(_replace(inp, revision=revision), llm=llm)
            inp = _replace(
                inp,
                revision=revision,
                drafts=(*inp.drafts, Draft(revision, run.result.reply)),
            )
        elif stage is Stage.CRITIC:
            run = await review_draft(inp, llm=llm)
            last = inp.drafts[-1]
            inp = _replace(
                inp, drafts=(*inp.drafts[:-1], Draft(last.revision, last.reply, run.result))
            )
        else:
            run = await route_to_human(inp, llm=llm)
        step = next_step(stage, run.result, revision=revision, max_revisions=inp.max_revisions)
        if isinstance(step, Finish):
            return str(step.outcome.value)
        stage, revision = step.stage, step.revision
        if step.reason:
            inp = _replace(inp, escalation_reason=step.reason)


def _replace(inp: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(inp, **changes)


def print_stages(measured: Measured) -> None:
    print(
        f"stage figures: {measured.conversations} demo conversations through the agents "
        f"against the simulator (latency model: its defaults); outcomes {measured.outcomes}"
    )
    print("stage      | calls/conv | prompt | completion | max_tokens | charged/conv | lat P50 s")
    for stage in STAGES:
        s = measured.stages[stage]
        p50 = percentile(s.latency, 0.5) if s.latency else 0.0
        print(
            f"{stage:<10} | {measured.per_conversation(stage):10.2f} | {s.mean(s.prompt):6.0f} "
            f"| {s.mean(s.completion):10.0f} | {s.mean(s.max_tokens):10.0f} "
            f"| {measured.charged_tokens(stage):12.0f} | {p50:9.2f}"
        )


# -- 2. the model against bench.quota: bench.capacity_check ------------------------------


# -- 3. on paper ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assumptions:
    conversations_per_user_day: float
    peak_hour_share: float
    regional_tpm: int
    tpm_per_ptu: int
    ptu_output_weight: float
    ptu_minimum: int
    ptu_increment: int
    ptu_usd_hour: float
    price_in: float
    price_out: float
    concurrent_calls: int
    instance_usd_hour: float


def paper(measured: Measured, users: int, a: Assumptions) -> list[str]:
    daily = users * a.conversations_per_user_day
    peak = daily * a.peak_hour_share / 3600.0
    lines = [
        f"{users:,} daily users: {daily:,.0f} conversations/day, peak {peak:,.2f}/s "
        f"({a.peak_hour_share:.0%} of a day's conversations in the peak hour)"
    ]
    total_tpm = 0.0
    ptu_tpm = 0.0  # input tokens per minute, output tokens weighted as PTU sizing counts them
    usd_tokens = 0.0
    instances = 0
    for stage in STAGES:
        tpm = peak * 60.0 * measured.charged_tokens(stage)
        total_tpm += tpm
        prompt, completion = measured.used_tokens(stage)
        ptu_tpm += peak * 60.0 * (prompt + a.ptu_output_weight * completion)
        usd_tokens += peak * 3600.0 * (prompt * a.price_in + completion * a.price_out) / 1e6
        s = measured.stages[stage]
        latency = s.mean(s.latency)
        busy = peak * measured.per_conversation(stage) * latency  # calls in flight (Little)
        stage_instances = max(1, math.ceil(busy / a.concurrent_calls))
        instances += stage_instances
        deployments = max(1, math.ceil(tpm / a.regional_tpm))
        lines.append(
            f"  {stage:<10} {tpm:>14,.0f} TPM charged -> {deployments} standard deployment(s) "
            f"at {a.regional_tpm:,} TPM; {busy:8.1f} calls in flight -> {stage_instances} "
            "instance(s)"
        )
    ptus = max(
        a.ptu_minimum, a.ptu_increment * math.ceil(total_tpm / a.tpm_per_ptu / a.ptu_increment)
    )
    regions = max(1, math.ceil(total_tpm / a.regional_tpm))
    lines.append(
        f"  total {total_tpm:,.0f} TPM at peak: {regions} region(s) of standard quota, or "
        f"{ptus:,} PTU for {ptu_tpm:,.0f} input-equivalent TPM ({a.tpm_per_ptu:,} per PTU, "
        f"output x{a.ptu_output_weight:g}; min {a.ptu_minimum})"
    )
    usd_functions = instances * a.instance_usd_hour
    lines.append(
        f"  $ per peak hour: tokens ${usd_tokens:,.2f} (standard, list price) or PTU "
        f"${ptus * a.ptu_usd_hour:,.2f}; Functions {instances} instance(s) ${usd_functions:,.2f}"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quota-table", type=Path, action="append", default=[])
    parser.add_argument(
        "--lanes-table", type=Path, action="append", default=[], help="a bench.quota --lanes run"
    )
    parser.add_argument(
        "--stray-table", type=Path, action="append", default=[], help="a bench.quota --stray run"
    )
    parser.add_argument("--measure", type=int, default=20, help="demo conversations to measure")
    parser.add_argument("--queue-seeds", type=int, default=5, help="seeds the queue replays")
    parser.add_argument("--conversations-per-user-day", type=float, default=1.0)
    parser.add_argument("--peak-hour-share", type=float, default=0.15)
    parser.add_argument("--regional-tpm", type=int, default=2_000_000)
    parser.add_argument(
        "--tpm-per-ptu", type=int, default=14_900, help="input TPM per PTU (gpt-4.1-mini's)"
    )
    parser.add_argument("--ptu-output-weight", type=float, default=4.0)
    parser.add_argument("--ptu-minimum", type=int, default=15)
    parser.add_argument("--ptu-increment", type=int, default=5)
    parser.add_argument(
        "--ptu-usd-hour", type=float, default=1.0, help="a placeholder: set your agreed price"
    )
    parser.add_argument("--price-in", type=float, default=0.15, help="USD per 1M prompt tokens")
    parser.add_argument("--price-out", type=float, default=0.60, help="USD per 1M completion")
    parser.add_argument("--concurrent-calls", type=int, default=16, help="per Function instance")
    parser.add_argument("--instance-usd-hour", type=float, default=0.10)
    args = parser.parse_args()
    for path in args.quota_table:
        print_checks(read_quota_table(path), args.queue_seeds)
        print()
    for path in args.lanes_table:
        print_lane_checks(read_lanes_table(path), args.queue_seeds)
        print()
    for path in args.stray_table:
        print_stray_checks(read_stray_table(path), args.queue_seeds)
        print()
    measured = asyncio.run(measure_stages(args.measure))
    print_stages(measured)
    assumptions = Assumptions(
        args.conversations_per_user_day,
        args.peak_hour_share,
        args.regional_tpm,
        args.tpm_per_ptu,
        args.ptu_output_weight,
        args.ptu_minimum,
        args.ptu_increment,
        args.ptu_usd_hour,
        args.price_in,
        args.price_out,
        args.concurrent_calls,
        args.instance_usd_hour,
    )
    print()
    print(f"assumptions (flags): {assumptions}")
    for users in (10_000, 10_000_000):
        print("\n".join(paper(measured, users, assumptions)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
