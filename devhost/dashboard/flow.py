"""The flow page's numbers: per queue and the hub, what the broker, the host's ``state.json``
and the collected spans say; per deployment and lane, the quota the simulator and the app's
model-call spans report."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from devhost.broker import Broker
from devhost.dashboard.lanes import LaneQuota, accounting_text, lane_quotas
from devhost.environment import Workdir, running_host
from devhost.simulator.config import ADMIN_KEY_HEADER
from shared.config import Settings
from shared.domain.messages import Stage

THROUGHPUT_WINDOW_S = 60.0


@dataclass
class FlowNode:
    """One box of the flow picture: a hub, a queue and the function that drains it."""

    name: str
    kind: str  # hub | queue | parking
    function: str = "-"
    backlog: int = 0
    scheduled: int = 0
    in_flight: int = 0
    dead_letters: int = 0
    instances: int = 0
    ceiling: int | None = None
    bound: str = "-"
    quota_cap: int | None = None
    seconds_per_call: float | None = None
    tokens_per_call: int | None = None
    per_minute: float = 0.0
    total: int = 0


@dataclass
class DeploymentQuota:
    name: str
    limit_tpm: int | None
    used_tpm: float | None = None
    requests: int = 0
    throttled: int = 0
    charged_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    accounting: str = ""
    faults: int = 0
    inferred: str = ""
    """The accounting the app's limiter learned from the answers' headers."""
    lanes: list[LaneQuota] = field(default_factory=list)

    @property
    def used_share(self) -> float | None:
        if self.used_tpm is None or not self.limit_tpm:
            return None
        return min(1.0, self.used_tpm / self.limit_tpm)


@dataclass
class Flow:
    running: bool
    pid: int | None
    hub: FlowNode | None
    ingest: FlowNode | None
    stages: list[FlowNode]
    parking: FlowNode | None
    outcomes: Counter[str]
    quotas: list[DeploymentQuota]
    simulator: str | None
    spans: int
    at: float = field(default_factory=time.time)


class Sampler:
    """Counters seen at each read, to turn running totals into rates over a window."""

    def __init__(self, window_s: float = THROUGHPUT_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def rate_per_minute(self, now: float, totals: dict[str, float]) -> dict[str, float]:
        self._samples.append((now, dict(totals)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return {name: 0.0 for name in totals}
        return {name: max(0.0, (v - old.get(name, v)) * 60.0 / span) for name, v in totals.items()}


class FlowReader:
    """The flow picture's numbers from the broker, ``state.json`` and the simulator."""

    def __init__(self, workdir: Workdir, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self._queues = Sampler()
        self._quota = Sampler()
        self._broker: Broker | None = None

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def broker(self) -> Broker | None:
        if self._broker is None and self.workdir.broker.exists():
            self._broker = Broker(self.workdir.broker)
        return self._broker

    async def read(
        self,
        outcomes: Counter[str],
        stage_ends: dict[str, int],
        spans: int,
        *,
        model_calls: Sequence[Mapping[str, Any]] = (),
        learned: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Flow:
        """The flow now; ``model_calls`` are the model-call span attributes of the last
        ``THROUGHPUT_WINDOW_S`` seconds (the lanes), ``learned`` the newest learned accounting
        per deployment."""
        now = time.time()
        host = running_host(self.workdir)
        functions: dict[str, Any] = (host or {}).get("functions", {})
        by_source = {str(info.get("source")): (name, info) for name, info in functions.items()}
        queues = self.settings.queues
        nodes: dict[str, FlowNode] = {}
        broker = self.broker()
        stats = broker.queue_stats() if broker is not None else {}
        rates = self._queues.rate_per_minute(
            now, {q: float(s.completed_total) for q, s in stats.items()}
        )
        for queue, s in stats.items():
            node = FlowNode(
                name=queue,
                kind="parking" if queue == queues.deadletter else "queue",
                backlog=s.active,
                scheduled=s.scheduled,
                in_flight=s.locked,
                dead_letters=s.deadlettered,
                per_minute=rates.get(queue, 0.0),
                total=s.completed_total,
            )
            _scaling(node, by_source.get(queue))
            nodes[queue] = node
        hub, ingest = self._hub(broker, by_source, stage_ends)
        stages = []
        for stage in Stage:
            node = nodes.get(queues.for_stage(stage)) or FlowNode(queues.for_stage(stage), "queue")
            if stage_ends:  # spans are collected: invocations that ended in the window
                node.per_minute = stage_ends.get(stage.value, 0) * 60.0 / THROUGHPUT_WINDOW_S
            stages.append(node)
        return Flow(
            running=host is not None,
            pid=(host or {}).get("pid"),
            hub=hub,
            ingest=ingest,
            stages=stages,
            parking=nodes.get(queues.deadletter),
            outcomes=outcomes,
            quotas=await self._quotas(
                now, (host or {}).get("simulator"), model_calls, learned or {}
            ),
            simulator=(host or {}).get("simulator"),
            spans=spans,
        )

    def _hub(
        self,
        broker: Broker | None,
        by_source: Mapping[str, tuple[str, dict[str, Any]]],
        stage_ends: Mapping[str, int],
    ) -> tuple[FlowNode | None, FlowNode | None]:
        """The hub's node and its ingest function's; none before the hub is declared."""
        if broker is None:
            return None, None
        try:
            partitions = broker.hub_stats(
                self.settings.eventhub_name, self.settings.eventhub_consumer_group
            )
        except Exception:  # no hub declared yet
            return None, None
        hub = FlowNode(
            name=self.settings.eventhub_name,
            kind="hub",
            backlog=sum(p.backlog for p in partitions.values()),
            total=sum(p.last_sequence + 1 for p in partitions.values()),
        )
        ingest = FlowNode(name="ingest", kind="function", backlog=hub.backlog)
        _scaling(ingest, by_source.get(self.settings.eventhub_name))
        ingest.per_minute = stage_ends.get("ingest", 0) * 60.0 / THROUGHPUT_WINDOW_S
        return hub, ingest

    async def _quotas(
        self,
        now: float,
        simulator: str | None,
        model_calls: Sequence[Mapping[str, Any]],
        learned: Mapping[str, Mapping[str, Any]],
    ) -> list[DeploymentQuota]:
        limits: dict[str, int | None] = dict(self.settings.llm.deployment_tpm)
        stats = await self._simulator_stats(simulator) if simulator else None
        sim: dict[str, Any] = (stats or {}).get("deployments", {})
        config = (stats or {}).get("_config", {})
        charged = {name: float(d.get("charged_tokens", 0)) for name, d in sim.items()}
        rates = self._quota.rate_per_minute(now, charged) if stats is not None else {}
        quotas = []
        for name, configured in config.items():
            if limits.get(name) is None and configured.get("tpm"):
                limits[name] = int(configured["tpm"])
        by_lane = lane_quotas(model_calls, limits, window_s=THROUGHPUT_WINDOW_S)
        for name in sorted(set(limits) | set(sim) | set(by_lane)):
            d = sim.get(name, {})
            limit = limits.get(name)
            configured = config.get(name) or {}
            quotas.append(
                DeploymentQuota(
                    name=name,
                    limit_tpm=limit,
                    used_tpm=rates.get(name, 0.0) if stats is not None else None,
                    requests=int(d.get("requests", 0)),
                    throttled=int(d.get("rate_limited", 0)),
                    charged_tokens=int(d.get("charged_tokens", 0)),
                    prompt_tokens=int(d.get("prompt_tokens", 0)),
                    completion_tokens=int(d.get("completion_tokens", 0)),
                    accounting=str(configured.get("accounting", "")),
                    faults=int(d.get("faults_injected", 0)),
                    inferred=accounting_text(learned.get(name)),
                    lanes=by_lane.get(name, []),
                )
            )
        return quotas

    async def _simulator_stats(self, url: str) -> dict[str, Any] | None:
        """The simulator's counters and per-deployment limits, with its admin key; None when
        it does not answer (an external endpoint, a stopped host)."""
        try:
            key = self.workdir.simulator_admin_key.read_text().strip()
        except OSError:
            return None
        headers = {ADMIN_KEY_HEADER: key}
        timeout = aiohttp.ClientTimeout(total=1.0)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"{url}/_sim/stats", headers=headers) as response:
                    if response.status != 200:
                        return None
                    stats: dict[str, Any] = await response.json()
                async with session.get(f"{url}/_sim/config", headers=headers) as response:
                    if response.status == 200:
                        stats["_config"] = _deployment_config(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return stats


def _deployment_config(config: Any) -> dict[str, dict[str, Any]]:
    """Per deployment, its ``tpm`` and ``accounting`` from the simulator's configuration."""
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(config, dict):
        return found
    deployments = config.get("deployments")
    if isinstance(deployments, dict):
        for name, limits in deployments.items():
            if isinstance(limits, dict):
                found[str(name)] = limits
    return found


def _scaling(node: FlowNode, found: tuple[str, dict[str, Any]] | None) -> None:
    if found is None:
        return
    name, info = found
    node.function = name
    node.instances = int(info.get("instances", 0))
    ceilings = [int(info[k]) for k in ("max", "cap", "quotaCap") if info.get(k) is not None]
    node.ceiling = min(ceilings) if ceilings else None
    node.bound = str(info.get("bound") or "-")
    node.quota_cap = None if info.get("quotaCap") is None else int(info["quotaCap"])
    profile = info.get("profile") or {}
    if profile:
        node.seconds_per_call = float(profile.get("secondsPerInvocation", 0.0))
        node.tokens_per_call = int(profile.get("tokensPerInvocation", 0))
