"""Metrics: every instrument Switchboard records, created lazily on the ``switchboard`` meter."""

from __future__ import annotations

import inspect
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar, cast

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.metrics import _Gauge as Gauge

from shared.llm.quota_metrics import QuotaSnapshot, SnapshotSource
from shared.telemetry.attributes import (
    _BREAKER_STATES,
    _SECONDS_BUCKETS,
    ERROR_TYPE,
    FUNCTION,
    GEN_AI_OPERATION,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_TOKEN_TYPE,
    LLM_LANE,
    OUTCOME,
    QUEUE,
    STAGE,
    _valid_amount,
    _valid_count,
)
from shared.telemetry.quota_gauges import (
    QUOTA_ACCOUNTING,
    QUOTA_GAUGES,
    quota_observations,
    throttle_readings,
)
from shared.telemetry.redaction import redact
from shared.telemetry.setup import _current_generation, _current_meter
from shared.telemetry.tracing import accounting_learned

if TYPE_CHECKING:
    from shared.llm.metrics import LLMMetrics
    from shared.llm.quota_metrics import QuotaMetrics, QuotaObserver

logger = logging.getLogger(__name__)


_I = TypeVar("_I")


BacklogCallback = Callable[[], Mapping[str, int]]


class Metrics:
    """Every instrument Switchboard records, created lazily on the ``switchboard`` meter.

    Instruments are re-created when :func:`configure_telemetry` replaces the meter provider,
    so a module-level instance stays valid; nothing is created or exported at import time.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._generation = -1
        self._meter: Meter | None = None
        self._instruments: dict[str, object] = {}
        self._backlog: list[BacklogCallback] = []
        self._instances: list[BacklogCallback] = []
        self._quota: list[Callable[[], SnapshotSource | None]] = []

    # -- pipeline

    def stage_completed(self, stage: str, outcome: str, latency_s: float) -> None:
        """A stage finished a message: ``switchboard.stage.duration`` (s) and ``.completed``."""
        attributes = {STAGE: str(stage), OUTCOME: str(outcome)}
        self._counter("switchboard.stage.completed", "{message}", "Messages a stage finished").add(
            1, attributes
        )
        if not isinstance(latency_s, int | float) or not math.isfinite(latency_s):
            logger.warning("dropping stage latency %r: not a finite number", latency_s)
            return
        # A wall clock stepping backwards yields a negative latency; it was ~0 in truth.
        self._histogram(
            "switchboard.stage.duration", "s", "Time a stage took per message", _SECONDS_BUCKETS
        ).record(max(0.0, float(latency_s)), attributes)

    def deadlettered(self, queue: str, reason: str) -> None:
        """A message was dead-lettered; ``reason`` should be a reason code, not free text."""
        self._counter(
            "switchboard.messages.deadlettered", "{message}", "Messages dead-lettered"
        ).add(1, {QUEUE: queue, ERROR_TYPE: redact(str(reason))[:64]})

    def rejected(self, source: str, code: str) -> None:
        """An input was refused by the request contract; ``code`` is its reason code."""
        self._counter(
            "switchboard.requests.rejected", "{request}", "Requests refused by the contract"
        ).add(1, {"source": source, ERROR_TYPE: code})

    def ingest_failed(self, events: int) -> None:
        """Events an ingest could not record (store or queue down); the batch is retried."""
        self._counter(
            "switchboard.ingest.failures", "{event}", "Events an ingest attempt failed to record"
        ).add(events)

    # -- model calls

    def tokens(
        self, stage: str, deployment: str, prompt: int, completion: int, cost_usd: float
    ) -> None:
        """Tokens and cost a stage spent: ``switchboard.llm.tokens`` and ``.llm.cost``."""
        tokens = self._counter("switchboard.llm.tokens", "{token}", "Tokens used per stage")
        base = {STAGE: str(stage), GEN_AI_REQUEST_MODEL: deployment}
        if _valid_count(prompt, "prompt tokens"):
            tokens.add(prompt, {**base, GEN_AI_TOKEN_TYPE: "input"})
        if _valid_count(completion, "completion tokens"):
            tokens.add(completion, {**base, GEN_AI_TOKEN_TYPE: "output"})
        if _valid_amount(cost_usd, "cost"):
            self._counter("switchboard.llm.cost", "USD", "Model cost per stage").add(
                float(cost_usd), base
            )

    def throttled(self, deployment: str) -> None:
        """The endpoint answered 429: ``switchboard.llm.throttled``."""
        self._counter("switchboard.llm.throttled", "{response}", "HTTP 429 answers").add(
            1, {GEN_AI_REQUEST_MODEL: deployment}
        )

    def cache(self, hit: bool, deployment: str | None = None, *, stage: str | None = None) -> None:
        """A response-cache lookup: ``switchboard.llm.cache`` with ``switchboard.cache.result``."""
        attributes = {"switchboard.cache.result": "hit" if hit else "miss"}
        if deployment:
            attributes[GEN_AI_REQUEST_MODEL] = deployment
        if stage:
            attributes[STAGE] = str(stage)
        self._counter("switchboard.llm.cache", "{lookup}", "Response-cache lookups").add(
            1, attributes
        )

    def breaker_state(self, deployment: str, state: str) -> None:
        """A circuit breaker changed state (closed, half_open, open).

        ``switchboard.llm.breaker.state`` holds 0, 1 or 2 per deployment, and
        ``switchboard.llm.breaker.transitions`` counts the changes.
        """
        value = _BREAKER_STATES.get(state.lower())
        if value is None:
            logger.warning("unknown breaker state %r for %s; not recorded", state, deployment)
            return
        self._counter(
            "switchboard.llm.breaker.transitions", "{transition}", "Circuit breaker changes"
        ).add(1, {GEN_AI_REQUEST_MODEL: deployment, "switchboard.breaker.state": state.lower()})
        self._gauge(
            "switchboard.llm.breaker.state", "1", "Breaker state: 0 closed, 1 half open, 2 open"
        ).set(value, {GEN_AI_REQUEST_MODEL: deployment})

    def call_completed(self, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        """One HTTP call to the model: ``gen_ai.client.operation.duration`` (s)."""
        if not isinstance(latency_s, int | float) or not math.isfinite(latency_s):
            logger.warning("dropping call latency %r: not a finite number", latency_s)
            return
        attributes = {
            GEN_AI_OPERATION: "chat",
            GEN_AI_REQUEST_MODEL: deployment,
            STAGE: str(stage),
            OUTCOME: outcome,
        }
        if outcome != "ok":
            attributes[ERROR_TYPE] = outcome
        self._histogram(
            "gen_ai.client.operation.duration", "s", "Model call duration", _SECONDS_BUCKETS
        ).record(max(0.0, float(latency_s)), attributes)

    def call_tokens(self, stage: str, deployment: str, prompt: int, completion: int) -> None:
        """Tokens of one model call: ``gen_ai.client.token.usage`` (a distribution per call)."""
        histogram = self._histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens per model call",
            (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
        )
        base = {GEN_AI_OPERATION: "chat", GEN_AI_REQUEST_MODEL: deployment, STAGE: str(stage)}
        if _valid_count(prompt, "prompt tokens"):
            histogram.record(prompt, {**base, GEN_AI_TOKEN_TYPE: "input"})
        if _valid_count(completion, "completion tokens"):
            histogram.record(completion, {**base, GEN_AI_TOKEN_TYPE: "output"})

    def call_cost(self, stage: str, deployment: str, cost_usd: float) -> None:
        """Cost of one model call: ``switchboard.llm.call.cost`` (a distribution per call)."""
        if _valid_amount(cost_usd, "call cost"):
            self._histogram(
                "switchboard.llm.call.cost",
                "USD",
                "Cost per model call",
                (0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0),
            ).record(float(cost_usd), {GEN_AI_REQUEST_MODEL: deployment, STAGE: str(stage)})

    def quota_wait(self, deployment: str, seconds: float) -> None:
        """Time a call waited for quota: ``switchboard.llm.quota_wait`` (s)."""
        if _valid_amount(seconds, "quota wait"):
            self._histogram(
                "switchboard.llm.quota_wait", "s", "Wait for quota before a call", _SECONDS_BUCKETS
            ).record(float(seconds), {GEN_AI_REQUEST_MODEL: deployment})

    def rescheduled(self, stage: str) -> None:
        """A message was re-sent later instead of waiting under its lock."""
        self._counter(
            "switchboard.messages.rescheduled", "{message}", "Messages re-sent with a delay"
        ).add(1, {STAGE: str(stage)})

    def fallback(self, stage: str, primary: str, used: str) -> None:
        """A call was served by a fallback deployment: ``switchboard.llm.fallback``."""
        self._counter("switchboard.llm.fallback", "{call}", "Calls served by a fallback").add(
            1, {STAGE: str(stage), GEN_AI_REQUEST_MODEL: primary, "switchboard.llm.used": used}
        )

    # -- quota (``shared.llm.quota_metrics``)

    def lane_call(self, deployment: str, lane: str, tokens: float, waited_s: float) -> None:
        """A call sent in a lane: ``switchboard.llm.quota.lane.tokens`` (charged) and
        ``.lane.wait`` (s), so interactive and batch show apart."""
        attributes = {GEN_AI_REQUEST_MODEL: deployment, LLM_LANE: lane}
        if _valid_amount(tokens, "lane tokens"):
            self._counter(
                "switchboard.llm.quota.lane.tokens", "{token}", "Tokens charged per lane"
            ).add(float(tokens), attributes)
        if _valid_amount(waited_s, "lane wait"):
            self._histogram(
                "switchboard.llm.quota.lane.wait", "s", "Wait for quota per lane", _SECONDS_BUCKETS
            ).record(float(waited_s), attributes)

    def accounting_changed(self, deployment: str, model: str) -> None:
        """The limiter adopted another accounting: ``switchboard.llm.quota.accounting.changes``."""
        self._counter(
            "switchboard.llm.quota.accounting.changes", "{change}", "Accounting models adopted"
        ).add(1, {GEN_AI_REQUEST_MODEL: deployment, QUOTA_ACCOUNTING: model})

    def observe_quota(self, source: SnapshotSource) -> None:
        """Report the limiter's snapshots (``switchboard.llm.quota.*`` gauges) at each
        collection. A bound method is held weakly: a dropped model client stops reporting."""
        ref: Callable[[], SnapshotSource | None] = (
            weakref.WeakMethod(source) if inspect.ismethod(source) else (lambda: source)
        )
        with self._lock:
            self._quota.append(ref)
        self.rebind()

    def _quota_snapshots(self) -> list[QuotaSnapshot]:
        found: list[QuotaSnapshot] = []
        for ref in list(self._quota):
            source = ref()
            if source is None:
                continue
            try:
                found.extend(source())
            except Exception:
                logger.warning("a quota snapshot source failed; skipped this collection")
        return found

    # -- observed

    def observe_backlog(self, callback: BacklogCallback) -> None:
        """Report ``switchboard.queue.backlog`` per queue from ``callback`` at each collection."""
        with self._lock:
            self._backlog.append(callback)
        self.rebind()

    def observe_instances(self, callback: BacklogCallback) -> None:
        """Report ``switchboard.function.instances`` per function from ``callback``."""
        with self._lock:
            self._instances.append(callback)
        self.rebind()

    # -- plumbing

    def rebind(self) -> None:
        """Follow the current meter: after (re)configuration, instruments are created afresh."""
        generation, meter = _current_meter()
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._meter = meter
                self._instruments = {}
            # Observable gauges report through callbacks, so they must exist on the meter
            # before the first collection rather than on first use. The callbacks read the
            # live lists, so a source added later is picked up without a new instrument.
            observed = (
                ("switchboard.queue.backlog", self._backlog, QUEUE, "{message}"),
                ("switchboard.function.instances", self._instances, FUNCTION, "{instance}"),
            )
            for name, sources, attribute, unit in observed:
                if sources and name not in self._instruments:
                    self._instruments[name] = meter.create_observable_gauge(
                        name,
                        callbacks=[_observations(sources, attribute)],
                        unit=unit,
                        description=f"Current value per {attribute}",
                    )
            if self._quota and QUOTA_GAUGES[0][0] not in self._instruments:
                self._create_quota_gauges(meter)

    def _create_quota_gauges(self, meter: Meter) -> None:
        for name, unit, description, read in QUOTA_GAUGES:
            self._instruments[name] = meter.create_observable_gauge(
                name,
                callbacks=[quota_observations(self._quota_snapshots, read)],
                unit=unit,
                description=description,
            )
        name = "switchboard.llm.quota.throttles"
        self._instruments[name] = meter.create_observable_counter(
            name,
            callbacks=[quota_observations(self._quota_snapshots, throttle_readings)],
            unit="{response}",
            description="429 answers per deployment, as the limiter counted them",
        )

    def _instrument(self, name: str, create: Callable[[Meter], _I]) -> _I:
        with self._lock:
            if _current_generation() != self._generation or self._meter is None:
                self.rebind()
            instrument = self._instruments.get(name)
            if instrument is None:
                assert self._meter is not None
                instrument = create(self._meter)
                self._instruments[name] = instrument
            return cast(_I, instrument)

    def _counter(self, name: str, unit: str, description: str) -> Counter:
        return self._instrument(
            name, lambda m: m.create_counter(name, unit=unit, description=description)
        )

    def _histogram(
        self, name: str, unit: str, description: str, buckets: Sequence[float]
    ) -> Histogram:
        return self._instrument(
            name,
            lambda m: m.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=buckets,
            ),
        )

    def _gauge(self, name: str, unit: str, description: str) -> Gauge:
        return self._instrument(
            name, lambda m: m.create_gauge(name, unit=unit, description=description)
        )


def _observations(
    callbacks: list[BacklogCallback], attribute: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        found: list[Observation] = []
        for callback in list(callbacks):
            try:
                values = callback()
                found.extend(Observation(int(v), {attribute: str(k)}) for k, v in values.items())
            except Exception:
                # One failing source must not blank the others or break the collection.
                logger.warning("a %s callback failed; skipped this collection", attribute)
        return found

    return observe


metrics: Final = Metrics()
"""The process's instruments; before :func:`configure_telemetry` they record nothing."""


class LLMTelemetry:
    """The LLM layer's metrics callbacks (``shared.llm.metrics.LLMMetrics``) on OpenTelemetry.

    Per-call values go to per-call distributions (``gen_ai.client.*``); per-stage totals are
    recorded by the pipeline through :meth:`Metrics.tokens`, so nothing is counted twice.
    """

    def __init__(self, sink: Metrics | None = None) -> None:
        self._m = sink if sink is not None else metrics

    def tokens(self, *, stage: str, deployment: str, prompt: int, completion: int) -> None:
        self._m.call_tokens(stage, deployment, prompt, completion)

    def cost(self, *, stage: str, deployment: str, usd: float) -> None:
        self._m.call_cost(stage, deployment, usd)

    def call(self, *, stage: str, deployment: str, outcome: str, latency_s: float) -> None:
        self._m.call_completed(stage, deployment, outcome, latency_s)

    def throttled(self, *, deployment: str, retry_after_s: float | None) -> None:
        self._m.throttled(deployment)

    def quota_wait(self, *, deployment: str, seconds: float) -> None:
        self._m.quota_wait(deployment, seconds)

    def rescheduled(self, *, stage: str, delay_s: float, reason: str) -> None:
        self._m.rescheduled(stage)

    def cache(self, *, stage: str, hit: bool) -> None:
        self._m.cache(hit, stage=stage)

    def breaker(self, *, deployment: str, state: str) -> None:
        self._m.breaker_state(deployment, state)

    def fallback(self, *, stage: str, primary: str, used: str) -> None:
        self._m.fallback(stage, primary, used)

    # -- shared.llm.quota_metrics.QuotaMetrics ------------------------------------------------

    def accounting(
        self, *, deployment: str, model: str, window_s: float, observations: int
    ) -> None:
        """A deployment's learned quota accounting changed: counted, and a short span under the
        stage, so a trace shows where the limiter learned it and the dashboard the latest."""
        self._m.accounting_changed(deployment, model)
        accounting_learned(
            deployment=deployment, model=model, window_s=window_s, observations=observations
        )

    def lane_call(self, *, deployment: str, lane: str, tokens: float, waited_s: float) -> None:
        """Counted per lane; the call's own span also carries its lane and its quota wait."""
        self._m.lane_call(deployment, lane, tokens, waited_s)

    def observe_quota(self, source: SnapshotSource) -> None:
        self._m.observe_quota(source)


if TYPE_CHECKING:
    _llm_metrics_conforms: LLMMetrics = LLMTelemetry()
    _quota_metrics_conforms: QuotaMetrics = LLMTelemetry()
    _quota_observer_conforms: QuotaObserver = LLMTelemetry()
