"""``GuardedChatModel``: the one retry layer between the agents and a chat endpoint.

For each ``ChatRequest`` it

1. answers from the response cache when the request is deterministic and was seen before;
2. refuses a call that would pass the customer's daily token budget (``BudgetExceeded``);
3. picks the first deployment of the stage (primary, then fallbacks in order) whose circuit is
   closed and whose quota can take the call within the wait budget, books that slot in the
   limiter, waits for it and sends;
4. sorts the outcome: success is accounted (tokens, cost, metrics) and cached; a content-filter
   refusal is final (``ContentFiltered``, never retried); a 429 books the server's retry-after and
   tries again if that still fits the wait budget; a 5xx, timeout, broken connection or malformed
   answer counts against the deployment's breaker and is retried a bounded number of times after a
   short jittered pause, on the next deployment when there is one; a 400 is our own bad request
   (``ModelRequestRejected``, permanent: not retried, no fallback, not counted by the breakers).

It never sleeps past the wait budget: a wait that would is turned into ``RetryLater(delay)`` (the
pipeline re-sends the message later and completes this one); every deployment open is
``CircuitOpen``, or ``RetryLater`` when the breakers stay open longer than the wait budget;
retries spent is ``TransientError``. Calls are sent with the SDK's own retries off, so this layer
is the only one, and each call has a timeout well under the message lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from shared.config import LLMSettings
from shared.domain.messages import Stage
from shared.errors import (
    ContentFiltered,
    InvalidInput,
    ModelRequestRejected,
    PermanentError,
    TransientError,
)
from shared.llm.accounting import CallSize
from shared.llm.breaker import BreakerPolicy, Breakers, BreakerState, CircuitBreaker
from shared.llm.budget import CustomerBudget, check_budget, utc_day
from shared.llm.cache import ResponseCache, cache_key, is_cacheable
from shared.llm.clock import Clock, SystemClock
from shared.llm.endpoint import (
    TRANSIENT_ENDPOINT_ERRORS,
    ChatEndpoint,
    EndpointCall,
    EndpointContentFiltered,
    EndpointError,
    EndpointRejected,
    EndpointReply,
    EndpointThrottled,
    EndpointTimeout,
    RateLimitInfo,
)
from shared.llm.ledger import ShareCoordinator
from shared.llm.limiter import DeploymentQuota, QuotaLimiter
from shared.llm.metrics import LLMMetrics, NoMetrics
from shared.llm.quota_metrics import QuotaMetrics, QuotaObserver, QuotaSnapshot
from shared.llm.reservation import Reservation
from shared.llm.slots import Slot, SlotPicker, retry_later
from shared.llm.tokens import TokenEstimator, default_estimator
from shared.ports import ChatRequest, ChatResult

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0
MAX_THROTTLES_PER_CALL = 4
"""429s one call may absorb before it gives the message back; with the limiter this is rare."""


@dataclass
class _Attempts:
    """What the retry loop of one call carries from one attempt to the next."""

    deadline: float
    failures: int = 0
    throttles: int = 0
    start_index: int = 0
    """Where in the stage's deployments the next slot is looked for first."""
    last_problem: str = "no attempt made"

    @property
    def number(self) -> int:
        """This attempt's number, from 1."""
        return self.failures + self.throttles + 1


@dataclass(frozen=True)
class _Attempt:
    """One call sent on a booked slot: what its outcome is accounted against."""

    stage: Stage
    slot: Slot
    quota: DeploymentQuota
    breaker: CircuitBreaker
    sent: float


class GuardedChatModel:
    """A ``ChatModel`` that spends a deployment's whole quota and never storms it."""

    def __init__(
        self,
        endpoint: ChatEndpoint,
        *,
        settings: LLMSettings,
        limiter: QuotaLimiter | None = None,
        breakers: Breakers | None = None,
        cache: ResponseCache | None = None,
        budget: CustomerBudget | None = None,
        shares: ShareCoordinator | None = None,
        clock: Clock | None = None,
        metrics: LLMMetrics | None = None,
        estimator: TokenEstimator | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._clock = clock or SystemClock()
        self._metrics = metrics or NoMetrics()
        self.limiter = limiter or QuotaLimiter(settings.deployment_tpm)
        self.breakers = breakers or Breakers(
            BreakerPolicy(
                failures=settings.breaker_failures,
                cooldown_s=settings.breaker_cooldown_s,
                error_rate=settings.breaker_error_rate,
                window_s=settings.breaker_window_s,
                min_calls=settings.breaker_min_calls,
            ),
            clock=self._clock,
        )
        self.breakers.set_listener(self._breaker_changed)
        self.cache = cache
        if cache is None and settings.cache_enabled:
            self.cache = ResponseCache(
                max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s, clock=clock
            )
        self._budget = budget
        self._shares = shares
        self._estimator = estimator or default_estimator()
        self._rng = rng or random.Random()
        self._slots = SlotPicker(
            limiter=self.limiter,
            breakers=self.breakers,
            shares=shares,
            clock=self._clock,
            metrics=self._metrics,
            wait_budget_s=settings.wait_budget_s,
        )
        if isinstance(self._metrics, QuotaObserver):
            self._metrics.observe_quota(self.quota_snapshots)

    def quota_snapshots(self) -> list[QuotaSnapshot]:
        """What the limiter learned of each deployment and how full it is, as of now."""
        return self.limiter.snapshots(self._clock.monotonic())

    # -- ChatModel ---------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answer ``request`` within the wait budget, or raise one of the pipeline's errors."""
        stage = _check_request(request)
        candidates = self._settings.deployments_for(stage)
        if not candidates:
            raise InvalidInput(f"no deployment is configured for the {stage.value} stage")

        keys: list[str] = []
        if self.cache is not None and is_cacheable(request):
            keys = [cache_key(d, request) for d in candidates]
            hit = self.cache.lookup(keys)
            self._metrics.cache(stage=stage.value, hit=hit is not None)
            if hit is not None:
                return ChatResult(
                    content=hit.content,
                    prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens,
                    deployment=hit.deployment,
                    model=hit.model,
                    cost_usd=0.0,
                    cached=True,
                    latency_s=0.0,
                )

        size = CallSize(self._estimator.prompt_tokens(request.messages), request.max_tokens)
        estimate = size.estimate
        day = utc_day(self._clock.time())
        if self._budget is not None and request.customer_id:
            await check_budget(self._budget, request.customer_id, day, estimate)

        reply, deployment, latency = await self._call(stage, request, candidates, size)

        cost = self._settings.price_of(deployment, reply.prompt_tokens, reply.completion_tokens)
        result = ChatResult(
            content=reply.content,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            deployment=deployment,
            model=reply.model,
            cost_usd=cost,
            cached=False,
            latency_s=latency,
        )
        self._metrics.tokens(
            stage=stage.value,
            deployment=deployment,
            prompt=reply.prompt_tokens,
            completion=reply.completion_tokens,
        )
        self._metrics.cost(stage=stage.value, deployment=deployment, usd=cost)
        if self._budget is not None and request.customer_id:
            await self._budget.add(request.customer_id, day, result.total_tokens)
        if self.cache is not None and keys and _worth_caching(request, reply):
            self.cache.put(keys[candidates.index(deployment)], result)
        return result

    async def close(self) -> None:
        """Close the endpoint, hand back quota shares and close the budget store."""
        await self._endpoint.close()
        if self._shares is not None:
            await self._shares.close()
        if self._budget is not None:
            await self._budget.close()

    # -- the retry loop ----------------------------------------------------------------------

    async def _call(
        self, stage: Stage, request: ChatRequest, candidates: Sequence[str], size: CallSize
    ) -> tuple[EndpointReply, str, float]:
        attempts = _Attempts(deadline=self._clock.monotonic() + self._settings.wait_budget_s)
        while True:
            slot = await self._slots.take(
                stage, candidates, size, attempts.deadline, attempts.start_index
            )
            breaker = self.breakers.for_deployment(slot.deployment)
            quota = self.limiter.quota(slot.deployment)
            await self._wait_for_slot(slot, quota, breaker)
            if slot.deployment != candidates[0]:
                self._metrics.fallback(
                    stage=stage.value, primary=candidates[0], used=slot.deployment
                )
            call = self._endpoint_call(stage, request, slot, attempts.number)
            attempt = _Attempt(stage, slot, quota, breaker, sent=self._clock.monotonic())
            quota.mark_sent(slot.reservation, attempt.sent)
            if isinstance(self._metrics, QuotaMetrics):
                self._metrics.lane_call(
                    deployment=slot.deployment,
                    lane=str(slot.reservation.lane),
                    tokens=quota.charge_of(size),
                    waited_s=slot.quota_wait_s,
                )
            try:
                reply = await self._send(call)
            except EndpointThrottled as exc:
                self._throttled(attempt, attempts, size, exc)
                continue
            except EndpointContentFiltered:
                breaker.success()
                self._record_call(stage, slot.deployment, "content_filter", attempt.sent)
                raise ContentFiltered(
                    f"the {stage.value} prompt was refused by the content filter"
                ) from None
            except TRANSIENT_ENDPOINT_ERRORS as exc:
                await self._failed(attempt, attempts, candidates, exc)
                continue
            except EndpointRejected as exc:
                self._rejected(attempt, exc)
            except BaseException:
                # Cancelled (the host is shutting down, the lock was lost) or a bug: the
                # deployment said nothing about its health, so a half-open probe is freed.
                breaker.cancel()
                raise
            return reply, slot.deployment, self._succeeded(attempt, reply)

    async def _wait_for_slot(
        self, slot: Slot, quota: DeploymentQuota, breaker: CircuitBreaker
    ) -> None:
        """Sleep until the booked slot; a cancelled wait hands the slot and the probe back."""
        try:
            if slot.wait_s > 0:
                await self._slots.wait(slot)
        except BaseException:
            quota.release(slot.reservation)
            breaker.cancel()
            raise
        if slot.quota_wait_s > 0:
            self._metrics.quota_wait(deployment=slot.deployment, seconds=slot.quota_wait_s)

    def _endpoint_call(
        self, stage: Stage, request: ChatRequest, slot: Slot, attempt: int
    ) -> EndpointCall:
        return EndpointCall(
            deployment=slot.deployment,
            messages=request.messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            schema_name=request.schema_name,
            json_schema=request.json_schema,
            timeout_s=self._settings.timeout_s,
            stage=stage.value,
            attempt=attempt,
            quota_wait_s=slot.quota_wait_s,
        )

    # -- one attempt's outcome ----------------------------------------------------------------

    def _succeeded(self, attempt: _Attempt, reply: EndpointReply) -> float:
        """Account an answer; return its latency, or raise if the filter cut it off."""
        deployment = attempt.slot.deployment
        attempt.breaker.success()
        self._observe(
            attempt.quota,
            attempt.slot.reservation,
            reply.rate,
            usage=(reply.prompt_tokens, reply.completion_tokens),
        )
        latency = self._clock.monotonic() - attempt.sent
        self._record_call(attempt.stage, deployment, "ok", attempt.sent)
        if reply.finish_reason == "content_filter":
            raise ContentFiltered(
                f"the {attempt.stage.value} completion was cut off by the content filter"
            )
        return latency

    def _throttled(
        self, attempt: _Attempt, attempts: _Attempts, size: CallSize, exc: EndpointThrottled
    ) -> None:
        """A 429: refund the booking, book the server's retry-after, give up after a few."""
        quota, deployment = attempt.quota, attempt.slot.deployment
        attempt.breaker.cancel()
        charge = quota.charge_of(size)
        quota.refund(attempt.slot.reservation)
        self._observe(quota, attempt.slot.reservation, exc.rate)
        quota.throttle(
            exc.rate.retry_after_s,
            self._clock.monotonic(),
            rate=exc.rate,
            charge=charge,
        )
        self._record_call(attempt.stage, deployment, "throttled", attempt.sent)
        self._metrics.throttled(deployment=deployment, retry_after_s=exc.rate.retry_after_s)
        attempts.throttles += 1
        attempts.last_problem = f"{deployment} answered 429"
        if attempts.throttles >= MAX_THROTTLES_PER_CALL:
            wait = max(exc.rate.retry_after_s or 1.0, 1.0)
            raise retry_later(self._metrics, attempt.stage, wait, attempts.last_problem) from None

    async def _failed(
        self,
        attempt: _Attempt,
        attempts: _Attempts,
        candidates: Sequence[str],
        exc: EndpointError,
    ) -> None:
        """A transient failure: count it, pause, and move on to the next deployment."""
        stage, deployment = attempt.stage, attempt.slot.deployment
        max_attempts = self._settings.max_attempts
        attempt.breaker.failure()
        self._observe(attempt.quota, attempt.slot.reservation, exc.rate)
        self._record_call(stage, deployment, exc.kind, attempt.sent)
        attempts.failures += 1
        attempts.last_problem = f"{deployment}: {exc.kind} ({exc})"
        log.warning(
            "%s call to %s failed (%s), attempt %d of %d",
            stage.value,
            deployment,
            exc.kind,
            attempts.failures,
            max_attempts,
        )
        if attempts.failures >= max_attempts:
            raise TransientError(
                f"{stage.value} call failed {attempts.failures} times; "
                f"last: {attempts.last_problem}"
            ) from None
        pause = self._backoff(attempts.failures)
        if self._clock.monotonic() + pause > attempts.deadline:
            raise TransientError(
                f"{stage.value} call: no time left in the wait budget to retry after "
                f"{attempts.last_problem}"
            ) from None
        await self._clock.sleep(pause)
        # Try the next deployment first: the one that just failed is the likeliest to fail again.
        attempts.start_index = (candidates.index(deployment) + 1) % len(candidates)

    def _rejected(self, attempt: _Attempt, exc: EndpointRejected) -> NoReturn:
        """The request itself, its credentials or its deployment: nothing about the deployment's
        health (the breaker does not count it), and another deployment would refuse the same
        request, so no fallback either."""
        stage, deployment = attempt.stage, attempt.slot.deployment
        attempt.breaker.cancel()
        self._record_call(stage, deployment, "rejected", attempt.sent)
        reason = (
            f"{stage.value} call rejected by {deployment}: HTTP {exc.status}"
            f"{f' ({exc.code})' if exc.code else ''}: {exc}"
        )
        if exc.status == 400:
            log.error("%s; the request is wrong and will not be retried", reason)
            raise ModelRequestRejected(reason) from None
        raise PermanentError(reason) from None

    def _observe(
        self,
        quota: DeploymentQuota,
        reservation: Reservation,
        rate: RateLimitInfo,
        *,
        usage: tuple[int, int] | None = None,
    ) -> None:
        """Reconcile the limiter with an answer's headers; report a newly learned accounting."""
        before = quota.model
        quota.observe(reservation, rate, self._clock.monotonic(), usage=usage)
        if quota.model != before and isinstance(self._metrics, QuotaMetrics):
            inference = quota.inference
            self._metrics.accounting(
                deployment=quota.name,
                model=quota.model.name,
                window_s=quota.model.window_s,
                observations=inference.observations if inference is not None else 0,
            )

    async def _send(self, call: EndpointCall) -> EndpointReply:
        # The SDK enforces the timeout; this is a backstop in case an endpoint ignores it.
        try:
            return await asyncio.wait_for(self._endpoint.complete(call), call.timeout_s + 5.0)
        except TimeoutError:
            raise EndpointTimeout(f"no answer within {call.timeout_s + 5.0:.0f}s") from None

    def _backoff(self, failures: int) -> float:
        """Full-jitter exponential backoff: short, and spread so retries do not align."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _record_call(self, stage: Stage, deployment: str, outcome: str, sent: float) -> None:
        self._metrics.call(
            stage=stage.value,
            deployment=deployment,
            outcome=outcome,
            latency_s=self._clock.monotonic() - sent,
        )

    def _breaker_changed(self, deployment: str, state: BreakerState) -> None:
        self._metrics.breaker(deployment=deployment, state=state.value)


def _worth_caching(request: ChatRequest, reply: EndpointReply) -> bool:
    """Only complete answers; with a schema, only ones that are JSON at all, so a broken answer
    is not served again to the redelivery that hopes for a better one."""
    if reply.finish_reason != "stop":
        return False
    if request.json_schema is None:
        return True
    try:
        json.loads(reply.content)
    except ValueError:
        return False
    return True


def _check_request(request: ChatRequest) -> Stage:
    """Reject a malformed request with a clear reason before it costs anything."""
    try:
        stage = Stage(request.stage)
    except ValueError:
        raise InvalidInput(f"unknown stage {request.stage!r}") from None
    if not request.messages:
        raise InvalidInput("a chat request needs at least one message")
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInput(f"message {i} has no role")
        if not isinstance(message.get("content"), str):
            raise InvalidInput(f"message {i} has no text content")
    if request.max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1")
    if not 0.0 <= request.temperature <= 2.0:
        raise InvalidInput("temperature must be within [0, 2]")
    return stage
