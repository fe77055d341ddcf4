"""Queue-length scaling for devhost: one scaler per function, each deciding on its own backlog.

**The rule.** Every polling interval each function's scaler computes

    want = min(ceil(backlog / target), maxInstancesPerFunction, partitions, quota cap)

where ``backlog`` is the messages waiting or in flight on its queue (events not yet
checkpointed, for the Event Hub function). It scales out at once, but by at most
``maxStepUp`` instances per interval. It scales in only to the largest ``want`` seen during the
last ``cooldown`` seconds (the stabilisation window of Kubernetes' HPA, which KEDA uses), so a
short dip does not stop workers that the next message needs; the same window takes an idle
function back to zero ``cooldown`` seconds after its backlog last had work in it.

**Always ready.** scale.json's ``alwaysReady`` keeps instances running whatever the backlog,
the way Flex Consumption's ``alwaysReady`` does: a list of ``{"name", "instanceCount"}`` where
the name is a trigger group (``http``, ``blob``, ``durable``: the functions of such a trigger
scale together) or ``function:<name>`` for a function that scales on its own (every queue and
hub trigger). devhost runs HTTP and blob triggers inside the host process, so only the
``function:`` entries start workers here; such a function never scales below its count, also
not after the cooldown, and its count is clamped to its ceiling of instances.

**One number, one place.** ``target`` is host.json's: a Service Bus instance takes
``serviceBus.maxConcurrentCalls`` messages at once, an Event Hub instance
``eventHubs.maxEventBatchSize`` events. Limits come from scale.json (``devhost`` section;
``eventHubPartitions`` caps the hub function, since a partition has one reader). infra/ gives
Azure and the KEDA ScaledObjects the same numbers, and ``infra/consistency.py`` checks them.

**The quota cap.** When the model deployment's quota, not the backlog, is the bound, more
instances only queue more calls in the app's limiter (or collect 429s), so instances the quota
cannot feed are not started. A deployment's tokens per minute feed at most
``R = TPM / 60 / c`` invocations per second, ``c`` being the tokens one invocation is charged
(its prompt tokens plus ``max_tokens`` per model call: the estimate Azure OpenAI and the app's
limiter book). By Little's law, the invocations that rate keeps busy at once are ``R x s``,
``s`` being how long one invocation takes when it does not wait for quota. An instance runs
``maxConcurrentCalls`` invocations at once, hence

    quota cap = max(1, ceil(R x s / maxConcurrentCalls))

Functions whose stages draw on the same deployment split its TPM max-min fairly by demand, with
``allocate_shares`` (the split the worker instances' quota ledger makes): a function's demand is
the TPM that would keep busy the invocations its backlog asks for, up to its maximum instances,
so a function that cannot use its share leaves it to the others. Every function keeps a cap of
at least one: a stage held at zero would strand conversations that already spent tokens
upstream, and progress is worth more than a perfect fit.

``c`` and ``s`` are measured, per stage, from the stage records the workers wrote to the store
during the last minute (``startedAt``, ``completedAt``, ``usage``): ``c`` is their mean; ``s``
is their lower quartile, because a record's time includes any wait for quota and those waits are
what the cap exists to prevent. Taking the mean would let the cap grow on the very waits too
many instances cause; the quickest quarter are the invocations that found quota free. Until a
stage has eight recent records, a prior stands in: the simulator's fixed latency (or
``DEVHOST_CALL_LATENCY_S``) and 500 prompt tokens.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from shared.domain.conversation import Conversation
from shared.errors import ConfigError
from shared.llm.ledger import allocate_shares
from shared.ports import DocumentStore

log = logging.getLogger(__name__)

PRIOR_PROMPT_TOKENS = 500
"""Prompt tokens assumed per call before any stage record has been measured."""


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ScaleLimits:
    """scale.json's ``devhost`` section (how far and how fast every function may scale) and its
    ``eventHubPartitions`` (the hub's partitions, which cap the hub function)."""

    max_instances: int = 4
    max_step_up: int = 4
    polling_interval_s: float = 1.0
    cooldown_s: float = 15.0
    event_hub_partitions: int = 4
    always_ready: tuple[tuple[str, int], ...] = ()
    """scale.json ``alwaysReady``: (name, instanceCount) pairs, a name being ``http``,
    ``blob``, ``durable`` or ``function:<function name>``."""

    def __post_init__(self) -> None:
        if self.max_instances < 1:
            raise ConfigError("maxInstancesPerFunction", "must be at least 1")
        if self.max_step_up < 1:
            raise ConfigError("maxStepUp", "must be at least 1")
        if not self.polling_interval_s > 0:
            raise ConfigError("pollingIntervalSeconds", "must be positive")
        if not self.cooldown_s >= 0:
            raise ConfigError("cooldownSeconds", "must not be negative")
        if self.event_hub_partitions < 1:
            raise ConfigError("eventHubPartitions", "must be at least 1")
        seen: set[str] = set()
        for name, count in self.always_ready:
            if name not in ALWAYS_READY_GROUPS and not (
                name.startswith(FUNCTION_PREFIX) and len(name) > len(FUNCTION_PREFIX)
            ):
                raise ConfigError(
                    "alwaysReady",
                    f"{name!r} is neither a group ({', '.join(ALWAYS_READY_GROUPS)}) "
                    f"nor {FUNCTION_PREFIX}<function name>",
                )
            if name in seen:
                raise ConfigError("alwaysReady", f"{name!r} is listed twice")
            seen.add(name)
            if count < 0:
                raise ConfigError("alwaysReady", f"{name}: instanceCount must not be negative")

    def always_ready_for(self, function: str) -> int:
        """Instances of ``function`` (a queue or hub trigger: it scales on its own) kept
        running whatever its backlog."""
        return dict(self.always_ready).get(FUNCTION_PREFIX + function, 0)

    @classmethod
    def from_file(cls, path: Path) -> ScaleLimits:
        """Read the limits from scale.json; a missing key takes its default, a bad one stops
        start-up with the file and key named."""
        try:
            whole = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), f"cannot read scale limits: {exc}") from exc
        data = whole.get("devhost", {})
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: devhost", "must be an object")
        defaults = cls()
        try:
            return cls(
                max_instances=int(data.get("maxInstancesPerFunction", defaults.max_instances)),
                max_step_up=int(data.get("maxStepUp", defaults.max_step_up)),
                polling_interval_s=float(
                    data.get("pollingIntervalSeconds", defaults.polling_interval_s)
                ),
                cooldown_s=float(data.get("cooldownSeconds", defaults.cooldown_s)),
                event_hub_partitions=int(
                    whole.get("eventHubPartitions", defaults.event_hub_partitions)
                ),
                always_ready=parse_always_ready(whole.get("alwaysReady", [])),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: devhost", f"not a number: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: devhost.{exc.setting}", exc.problem) from exc


FUNCTION_PREFIX = "function:"
ALWAYS_READY_GROUPS = ("http", "blob", "durable")
"""Flex Consumption's trigger groups: the functions of each scale together as one."""


def parse_always_ready(raw: object) -> tuple[tuple[str, int], ...]:
    """scale.json ``alwaysReady`` (Flex Consumption's shape) as (name, instanceCount) pairs."""
    if not isinstance(raw, list):
        raise ConfigError("alwaysReady", "must be a list of {name, instanceCount}")
    pairs = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError("alwaysReady", f"{entry!r} is not {{name, instanceCount}}")
        count = entry.get("instanceCount", 0)
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError("alwaysReady", f"{entry['name']}: instanceCount must be an integer")
        pairs.append((entry["name"], count))
    return tuple(pairs)


# --------------------------------------------------------------------------- one function


@dataclass
class FunctionScaler:
    """The scaling decision of one function; ``decide`` is called once per polling interval.

    ``cap`` is a fixed ceiling (the hub's partition count); ``quota_cap`` is the ceiling the
    model quota sets, refreshed by the host before each decision. ``always_ready`` instances
    run whatever the backlog (at most the fixed ceilings; the quota cap does not stop them).
    ``bound`` says what limited the last decision: backlog, max, partitions, quota, step
    (scale-out rate), cooldown or alwaysReady.
    """

    name: str
    target_per_instance: int
    limits: ScaleLimits
    cap: int | None = None
    instances: int = 0
    quota_cap: int | None = None
    always_ready: int = 0
    bound: str = "backlog"
    _recent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def ceiling(self) -> int:
        """The most instances this function may run now."""
        return min(
            c for c in (self.limits.max_instances, self.cap, self.quota_cap) if c is not None
        )

    def floor(self) -> int:
        """The fewest instances this function runs: its always-ready count, within its fixed
        ceilings."""
        fixed = min(c for c in (self.limits.max_instances, self.cap) if c is not None)
        return max(0, min(self.always_ready, fixed))

    def desired(self, backlog: int) -> int:
        """ceil(backlog / target), clamped to [floor, ceiling]."""
        want = math.ceil(max(0, backlog) / max(1, self.target_per_instance))
        return max(self.floor(), min(want, self.ceiling()))

    def decide(self, backlog: int, now: float) -> int:
        """The instance count to run now, given the backlog (waiting + in flight) at ``now``.

        ``instances`` may have been lowered by the caller since the last call (a worker died);
        the decision starts from it.
        """
        want = self.desired(backlog)
        self._remember(want, now)
        if want > self.instances:
            self.instances = min(want, self.instances + self.limits.max_step_up)
            self.bound = "step" if self.instances < want else self._bound_of(backlog)
        else:
            # Scale in to the most that was wanted within the cooldown, never below that.
            keep = max(w for _, w in self._recent)
            self.instances = min(self.instances, keep)
            self.bound = "cooldown" if self.instances > want else self._bound_of(backlog)
        return self.instances

    def _remember(self, want: int, now: float) -> None:
        self._recent.append((now, want))
        while len(self._recent) > 1 and now - self._recent[0][0] >= self.limits.cooldown_s:
            self._recent.popleft()

    def _bound_of(self, backlog: int) -> str:
        want = math.ceil(max(0, backlog) / max(1, self.target_per_instance))
        if self.instances > 0 and self.instances == self.floor() and want < self.instances:
            return "alwaysReady"
        ceiling = self.ceiling()
        if want <= ceiling:
            return "backlog"
        if self.limits.max_instances == ceiling:
            return "max"
        if self.cap == ceiling:
            return "partitions"
        return "quota"


# --------------------------------------------------------------------------- quota cap


def quota_cap(
    *,
    tokens_per_minute: float,
    tokens_per_call: float,
    call_latency_s: float,
    per_instance: int,
) -> int:
    """Instances a share of a deployment's quota can keep busy: the invocations it sustains in
    flight (invocations per second x seconds per invocation, Little's law) over the invocations
    one instance runs at once. Never below one, so a stage with work always makes progress."""
    if tokens_per_minute <= 0 or tokens_per_call <= 0:
        return 1
    calls_per_s = tokens_per_minute / 60.0 / tokens_per_call
    in_flight = calls_per_s * max(call_latency_s, 0.001)
    return max(1, math.ceil(in_flight / max(1, per_instance)))


@dataclass(frozen=True)
class QuotaBinding:
    """A queue function whose invocations call one model deployment."""

    function: str
    stage: str
    deployment: str
    tokens_per_minute: int
    max_tokens: int
    per_instance: int
    max_instances: int


@dataclass(frozen=True)
class StageSample:
    """One finished stage record, as far as the quota cap cares."""

    key: str
    stage: str
    completed_at: float
    seconds: float
    prompt_tokens: int
    calls: int
    cached_calls: int

    @property
    def model_calls(self) -> int:
        """Calls that reached the endpoint (a cache hit costs no quota)."""
        return max(0, self.calls - self.cached_calls)


@dataclass(frozen=True)
class CallProfile:
    """What one invocation of a stage costs its deployment, measured or assumed."""

    tokens: float
    seconds: float
    samples: int

    @property
    def measured(self) -> bool:
        return self.samples > 0


class QuotaPlanner:
    """Turns the deployments' TPM, the measured call profiles and the backlogs into quota caps."""

    def __init__(
        self,
        bindings: Iterable[QuotaBinding],
        *,
        prior_latency_s: float,
        prior_prompt_tokens: int = PRIOR_PROMPT_TOKENS,
        window_s: float = 60.0,
        min_samples: int = 8,
        quantile: float = 0.25,
    ) -> None:
        if not prior_latency_s > 0:
            raise ConfigError("DEVHOST_CALL_LATENCY_S", "must be positive")
        if not 0 <= quantile <= 1:
            raise ValueError("quantile must be within [0, 1]")
        self.bindings = {b.function: b for b in bindings}
        self.prior_latency_s = prior_latency_s
        self.prior_prompt_tokens = prior_prompt_tokens
        self.window_s = window_s
        self.min_samples = max(1, min_samples)
        self.quantile = quantile
        self._samples: dict[str, StageSample] = {}

    def observe(self, samples: Iterable[StageSample]) -> None:
        """Add finished stage records; one seen before (same key) is kept once."""
        for sample in samples:
            if sample.model_calls > 0 and sample.seconds >= 0:
                self._samples[sample.key] = sample

    def profile(self, function: str, now: float) -> CallProfile:
        """The function's stage profile from the records of the last ``window_s`` seconds."""
        binding = self.bindings[function]
        self._forget(now)
        recent = [s for s in self._samples.values() if s.stage == binding.stage]
        if len(recent) < self.min_samples:
            return CallProfile(
                tokens=float(self.prior_prompt_tokens + binding.max_tokens),
                seconds=self.prior_latency_s,
                samples=0,
            )
        tokens = [
            s.prompt_tokens * s.model_calls / max(1, s.calls) + s.model_calls * binding.max_tokens
            for s in recent
        ]
        return CallProfile(
            tokens=sum(tokens) / len(tokens),
            seconds=max(0.001, _quantile([s.seconds for s in recent], self.quantile)),
            samples=len(recent),
        )

    def caps(self, backlogs: Mapping[str, int], now: float) -> dict[str, int]:
        """The quota cap of every bound function: its deployment's TPM split by demand."""
        groups: dict[str, list[QuotaBinding]] = {}
        for binding in self.bindings.values():
            groups.setdefault(binding.deployment, []).append(binding)
        caps: dict[str, int] = {}
        for group in groups.values():
            profiles = {b.function: self.profile(b.function, now) for b in group}
            demands = {}
            for b in group:
                slots = min(max(0, backlogs.get(b.function, 0)), b.max_instances * b.per_instance)
                profile = profiles[b.function]
                demands[b.function] = slots / profile.seconds * profile.tokens * 60.0
            shares = allocate_shares(demands, float(group[0].tokens_per_minute))
            for b in group:
                caps[b.function] = quota_cap(
                    tokens_per_minute=shares[b.function],
                    tokens_per_call=profiles[b.function].tokens,
                    call_latency_s=profiles[b.function].seconds,
                    per_instance=b.per_instance,
                )
        return caps

    def _forget(self, now: float) -> None:
        horizon = now - self.window_s
        stale = [key for key, s in self._samples.items() if s.completed_at < horizon]
        for key in stale:
            del self._samples[key]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- measurement

SAMPLE_LIMIT = 10_000
"""Documents read per sampling round; the scaler needs recent records, not all of them."""


async def stage_samples(store: DocumentStore, container: str, *, since: float) -> list[StageSample]:
    """The stage records finished since ``since`` (epoch seconds), read through the store port
    from the conversations written since then. Rejections have none; a document that is not a
    conversation is skipped."""
    docs = await store.changed_since(container, math.floor(since), limit=SAMPLE_LIMIT)
    samples: list[StageSample] = []
    for doc in docs:
        try:
            conversation = Conversation.from_doc(doc)
        except ValidationError:
            continue
        for record in conversation.stages.values():
            ended = record.completed_at.timestamp()
            if ended < since:
                continue
            samples.append(
                StageSample(
                    key=f"{conversation.id}/{record.key}",
                    stage=record.stage.value,
                    completed_at=ended,
                    seconds=ended - record.started_at.timestamp(),
                    prompt_tokens=record.usage.prompt_tokens,
                    calls=record.usage.calls,
                    cached_calls=record.usage.cached_calls,
                )
            )
    return samples
