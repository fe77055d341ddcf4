"""What a running simulator keeps: its deployments' limits, limiters and counters, and the
configuration the handlers read (changed in place by ``PUT /_sim/config``)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devhost.simulator.accounting import profile as accounting_profile
from devhost.simulator.config import DeploymentLimits, SimulatorConfig
from devhost.simulator.faults import FaultDice
from devhost.simulator.ratelimit import Clock, Decision, DeploymentLimiter
from devhost.simulator.tokens import tokenizer_name


@dataclass
class DeploymentStats:
    """Counters of one deployment, as ``GET /_sim/stats`` reports them."""

    requests: int = 0
    succeeded: int = 0
    throttled: int = 0
    """429s from the quota (forced 429s are counted under ``faults``)."""
    bad_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0
    """What the quota windows counted for every admitted request (per the accounting profile:
    prompt + max_tokens for ``azure``)."""
    faults: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "rate_limited": self.throttled + self.faults.get("429", 0),
            "faults_injected": sum(self.faults.values()),
        }


class Deployment:
    """A deployment's limits, limiter and counters."""

    def __init__(self, name: str, limits: DeploymentLimits, clock: Clock) -> None:
        self.name = name
        self.limits = limits
        self.limiter = DeploymentLimiter(
            tpm=limits.tpm,
            rpm=limits.effective_rpm,
            clock=clock,
            profile=accounting_profile(limits.accounting),
        )
        self.stats = DeploymentStats()

    def apply(self, limits: DeploymentLimits) -> None:
        """Take new limits; the admitted history stays, so windows do not reset."""
        if limits != self.limits:
            self.limits = limits
            self.limiter.tpm = limits.tpm
            self.limiter.rpm = limits.effective_rpm
            self.limiter.profile = accounting_profile(limits.accounting)

    def rate_headers(self, decision: Decision) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limits.effective_rpm),
            "x-ratelimit-limit-tokens": str(self.limits.tpm),
            "x-ratelimit-remaining-requests": str(decision.remaining_requests),
            "x-ratelimit-remaining-tokens": str(decision.remaining_tokens),
        }


class SimulatorState:
    """Everything the handlers share. Lives in the application; one per simulator."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.deployments: dict[str, Deployment] = {}
        self.started = time.monotonic()
        self.in_flight = 0
        self.max_in_flight = 0
        self.config = config
        self.dice = FaultDice(config.faults, seed=config.seed)
        self._latency_rng = random.Random(config.seed)

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Apply a new configuration to running deployments, keeping their windows."""
        old = self.config
        self.config = config
        if config.faults != old.faults or config.seed != old.seed:
            self.dice = FaultDice(config.faults, seed=config.seed)
        for name, deployment in list(self.deployments.items()):
            limits = config.limits_for(name)
            if limits is None:
                del self.deployments[name]
            else:
                deployment.apply(limits)

    def reset(self) -> None:
        """Zero the counters and empty every rate window."""
        for deployment in self.deployments.values():
            deployment.stats = DeploymentStats()
            deployment.limiter.reset()

    def deployment(self, name: str) -> Deployment | None:
        limits = self.config.limits_for(name)
        if limits is None:
            return None
        found = self.deployments.get(name)
        if found is None:
            found = self.deployments[name] = Deployment(name, limits, self.clock)
        else:
            found.apply(limits)
        return found

    def authorized(self, headers: Mapping[str, str]) -> bool:
        config = self.config
        if not config.auth_required:
            return True
        key = headers.get("api-key")
        if key is not None and config.api_key is not None:
            return hmac.compare_digest(key.encode(), config.api_key.encode())
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if config.accept_bearer:
            return True
        return config.api_key is not None and hmac.compare_digest(
            token.encode(), config.api_key.encode()
        )

    def latency_s(self, completion_tokens: int) -> float:
        model = self.config.latency
        if model.fixed_ms is not None:
            return model.fixed_ms / 1000
        base = model.ttft_ms + model.per_token_ms * completion_tokens
        spread = self._latency_rng.uniform(-model.jitter, model.jitter) if model.jitter else 0.0
        return max(0.0, base * (1 + spread)) / 1000

    def first_token_s(self) -> float:
        model = self.config.latency
        return (model.fixed_ms if model.fixed_ms is not None else model.ttft_ms) / 1000

    def stats(self) -> dict[str, Any]:
        per_deployment = {name: d.stats.snapshot() for name, d in self.deployments.items()}
        totals: dict[str, int] = {}
        for snapshot in per_deployment.values():
            for key, value in snapshot.items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        return {
            "deployments": per_deployment,
            "totals": totals,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "tokenizer": tokenizer_name(),
            "uptime_s": round(time.monotonic() - self.started, 3),
        }


STATE = web.AppKey("simulator_state", SimulatorState)
