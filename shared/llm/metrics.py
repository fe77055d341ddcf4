"""The counters the LLM layer reports, behind a tiny Protocol so it depends on no telemetry SDK.

The composition root passes an adapter onto OpenTelemetry (``shared.telemetry``); tests and the
benchmark use ``CountingMetrics``; everything else gets the no-op default.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class LLMMetrics(Protocol):
    """Callbacks for what operators watch: tokens, cost, throttling, cache, breakers, waits."""

    def tokens(self, *, stage: str, deployment: str, prompt: int, completion: int) -> None: ...

    def cost(self, *, stage: str, deployment: str, usd: float) -> None: ...

    def call(self, *, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        """One HTTP call finished; ``outcome`` is ok, throttled, server_error, timeout, ..."""
        ...

    def throttled(self, *, deployment: str, retry_after_s: float | None) -> None:
        """The endpoint answered 429."""
        ...

    def quota_wait(self, *, deployment: str, seconds: float) -> None:
        """A call waited this long for quota before it was sent."""
        ...

    def rescheduled(self, *, stage: str, delay_s: float, reason: str) -> None:
        """A call gave up waiting (``RetryLater``): the message will be re-sent later."""
        ...

    def cache(self, *, stage: str, hit: bool) -> None: ...

    def breaker(self, *, deployment: str, state: str) -> None:
        """A circuit breaker changed state (closed, open, half_open)."""
        ...

    def fallback(self, *, stage: str, primary: str, used: str) -> None:
        """A call was served by a deployment other than the stage's primary."""
        ...


class NoMetrics:
    """Discards everything."""

    def tokens(self, *, stage: str, deployment: str, prompt: int, completion: int) -> None:
        pass

    def cost(self, *, stage: str, deployment: str, usd: float) -> None:
        pass

    def call(self, *, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        pass

    def throttled(self, *, deployment: str, retry_after_s: float | None) -> None:
        pass

    def quota_wait(self, *, deployment: str, seconds: float) -> None:
        pass

    def rescheduled(self, *, stage: str, delay_s: float, reason: str) -> None:
        pass

    def cache(self, *, stage: str, hit: bool) -> None:
        pass

    def breaker(self, *, deployment: str, state: str) -> None:
        pass

    def fallback(self, *, stage: str, primary: str, used: str) -> None:
        pass


@dataclass
class CountingMetrics:
    """Keeps totals in memory: for tests, the benchmark and a quick look in devhost."""

    prompt_tokens: Counter[str] = field(default_factory=Counter)
    completion_tokens: Counter[str] = field(default_factory=Counter)
    cost_usd: dict[str, float] = field(default_factory=dict)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    throttles: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)
    reschedules: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    breaker_states: list[tuple[str, str]] = field(default_factory=list)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)

    def tokens(self, *, stage: str, deployment: str, prompt: int, completion: int) -> None:
        self.prompt_tokens[stage] += prompt
        self.completion_tokens[stage] += completion

    def cost(self, *, stage: str, deployment: str, usd: float) -> None:
        self.cost_usd[stage] = self.cost_usd.get(stage, 0.0) + usd

    def call(self, *, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        self.calls[(deployment, outcome)] += 1

    def throttled(self, *, deployment: str, retry_after_s: float | None) -> None:
        self.throttles[deployment] += 1

    def quota_wait(self, *, deployment: str, seconds: float) -> None:
        self.waits.append(seconds)

    def rescheduled(self, *, stage: str, delay_s: float, reason: str) -> None:
        self.reschedules += 1

    def cache(self, *, stage: str, hit: bool) -> None:
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1

    def breaker(self, *, deployment: str, state: str) -> None:
        self.breaker_states.append((deployment, state))

    def fallback(self, *, stage: str, primary: str, used: str) -> None:
        self.fallbacks[(primary, used)] += 1

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())
