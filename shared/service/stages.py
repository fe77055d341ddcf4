"""Stages: run the agent a queue message asks for, exactly once in effect, to an outcome.

Every stage write is keyed by (conversation, stage, revision) and conditional (DESIGN §3): a
redelivered message finds its stage record, re-sends the next message under the same
deterministic id (duplicate detection drops it) and completes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.agents import critic, escalation, intent, response
from shared.agents.structured import AgentRun
from shared.domain.agent_input import AgentInput
from shared.domain.conversation import (
    RECEIVED,
    Conversation,
    NextStep,
    StageError,
    StageRecord,
    StageUsage,
    stage_key,
)
from shared.domain.messages import Envelope, Stage, message_id_for
from shared.domain.routing import Finish, Outcome, Step, after_model_refusal, next_step
from shared.errors import (
    AgentCrashed,
    BudgetExceeded,
    InvalidInput,
    ModelRefusal,
    PermanentError,
    RetryLater,
    SwitchboardError,
    TransientError,
)
from shared.llm.budget import decide_reschedule, total_budget_reason, transient_delay
from shared.llm.lanes import lane
from shared.ports import Usage
from shared.service.core import Core
from shared.service.outbox import Outbox
from shared.telemetry import current_traceparent, metrics, stage_span, trace_id_of

log = logging.getLogger(__name__)

Agent = Callable[..., Awaitable[AgentRun[Any]]]
AGENTS: dict[Stage, Agent] = {
    Stage.INTENT: intent.run,
    Stage.RESPONSE: response.run,
    Stage.CRITIC: critic.run,
    Stage.ESCALATION: escalation.run,
}
MAX_DELIVERY_COUNT = 10
"""The queues' maxDeliveryCount (scale.json, set on every queue by infra and devhost)."""


class Handled(StrEnum):
    """What became of one queue message; the trigger completes it in every case."""

    DONE = "done"
    REPLAYED = "replayed"
    RESCHEDULED = "rescheduled"
    DEAD_LETTERED = "dead_lettered"
    STALE = "stale"


@dataclass(frozen=True)
class AgentOutcome:
    """What an agent's turn produced: its result (None when the model refused), what it cost,
    where the conversation goes next, and why there is no result, if there is none."""

    result: dict[str, Any] | None
    usage: Usage
    step: Step
    error: StageError | None = None


class Stages:
    """The four agents' queue messages."""

    def __init__(self, core: Core, *, max_delivery_count: int = MAX_DELIVERY_COUNT) -> None:
        self.core = core
        self.max_delivery_count = max_delivery_count
        self.outbox = Outbox(core)

    async def handle(
        self, body: bytes, *, stage: Stage, message_id: str, delivery_count: int = 1
    ) -> Handled:
        """Run the stage a queue message asks for, exactly once in effect, to an outcome.

        - Transient trouble (a busy store, an open circuit, a model that keeps failing or
          throttling) never burns deliveries: the message is re-sent later with capped
          exponential backoff (the breaker's own interval at least) and this one completes.
        - A permanent problem (an invalid message, a request the model refuses as bad, a bug
          the agent hits on this input) parks the message at once with its reason, and the
          conversation ends ``failed`` with that reason.
        - Anything else unexpected (the store or the queue failing in a way nobody
          classified) propagates, so the platform abandons and redelivers; on the last
          delivery the handler itself parks the message and fails the conversation, since it
          still holds the lock and knows why.
        """
        queue = self.core.settings.queues.for_stage(stage)
        try:
            env = Envelope.from_bytes(body)
            if env.stage is not stage:
                raise InvalidInput(f"a {env.stage.value} message arrived on queue {queue!r}")
        except InvalidInput as exc:
            await self.core.outbound.dead_letter(queue, body, message_id, exc, conversation_id=None)
            return Handled.DEAD_LETTERED
        with stage_span(
            f"{env.stage.value} agent",
            traceparent=env.traceparent,
            conversation_id=env.conversation_id,
            stage=env.stage.value,
            attributes={"messaging.message.id": message_id, "delivery_count": delivery_count},
        ):
            try:
                return await self._run(env, body, queue, message_id)
            except RetryLater as exc:
                return await self._reschedule(env, body, queue, message_id, exc)
            except TransientError as exc:
                metrics.rescheduled(env.stage.value)
                later = RetryLater(transient_delay(env.attempt, exc), str(exc))
                return await self._reschedule(env, body, queue, message_id, later)
            except PermanentError as exc:
                return await self._give_up(env, body, queue, message_id, exc)
            except Exception as exc:
                if delivery_count < self.max_delivery_count:
                    raise
                log.exception("last delivery of %s failed", message_id)
                spent = PermanentError(
                    f"delivery {delivery_count} of {self.max_delivery_count} failed: "
                    f"{exc.__class__.__name__}"
                )
                return await self._give_up(env, body, queue, message_id, spent)

    async def _run(self, env: Envelope, body: bytes, queue: str, message_id: str) -> Handled:
        cid = env.conversation_id
        conversation = await self.core.conversations.get(cid)
        if conversation is None:
            exc = InvalidInput(f"conversation {cid} does not exist")
            await self.core.outbound.dead_letter(queue, body, message_id, exc, conversation_id=cid)
            return Handled.DEAD_LETTERED
        done = conversation.record(env.stage, env.revision, env.turn)
        if done is not None:
            await self._forward(env, done.next_step())
            # A final outcome's message still pending (the send or its mark was cut short).
            await self._after_outcome(conversation)
            return Handled.REPLAYED
        if conversation.is_final or env.turn != conversation.turn:
            await self._after_outcome(conversation)
            log.info(
                "conversation %s is %s at turn %d; %s:%d of turn %d is stale",
                cid,
                conversation.status,
                conversation.turn,
                env.stage.value,
                env.revision,
                env.turn,
            )
            return Handled.STALE

        started = self.core.clock()
        inp = conversation.agent_input(env, max_revisions=self.core.settings.max_revisions)
        try:
            turn = await self._call_agent(env, inp)
        except BudgetExceeded as exc:
            error = StageError(reason=exc.reason_code, description=exc.description)
            turn = AgentOutcome(None, Usage(), Finish(Outcome.REJECTED, exc.description), error)
        record = self._stage_record(env, message_id, turn, started)
        written = await self._commit(cid, record, turn.step)
        stored = written.stages[record.key]
        outcome = stored.next.outcome
        metrics.stage_completed(
            env.stage.value,
            outcome.value if outcome is not None else "forwarded",
            (self.core.clock() - started).total_seconds(),
        )
        await self._forward(env, stored.next_step())
        await self._after_outcome(written)
        return Handled.DONE

    def _stage_record(
        self, env: Envelope, message_id: str, turn: AgentOutcome, started: datetime
    ) -> StageRecord:
        """What this delivery of the stage did, as the conversation stores it: the agent's
        result and usage, the step it chose, the trace it ran in and when."""
        here = current_traceparent()
        return StageRecord.model_validate(
            {
                "key": stage_key(env.stage, env.revision, env.turn),
                "stage": env.stage,
                "revision": env.revision,
                "turn": env.turn,
                "message_id": message_id,
                "trace_id": trace_id_of(here) if here else "",
                "result": turn.result,
                "usage": StageUsage.model_validate(turn.usage.as_dict()),
                "next": NextStep.of(turn.step),
                "started_at": started,
                "completed_at": self.core.clock(),
                "error": turn.error,
            }
        )

    async def _after_outcome(self, conversation: Conversation) -> None:
        """Send the outcome's pending outbox entries; then start the follow-up that waited for
        this turn to end, if one did (its first message has a deterministic id, so doing this
        again after a crash sends nothing twice)."""
        await self.outbox.flush(conversation)
        now = self.core.clock()
        if conversation.queued and conversation.is_final:
            conversation = await self.core.conversations.update(
                conversation.conversation_id, lambda c: c.settle_queued(now=now)
            )
        if conversation.status == RECEIVED and conversation.turn > 0:
            await self.core.outbound.send(
                conversation.first_message(now=now, traceparent=current_traceparent())
            )

    async def _call_agent(self, env: Envelope, inp: AgentInput) -> AgentOutcome:
        settings = self.core.settings
        max_tokens = settings.llm.max_tokens.get(env.stage)
        kwargs: dict[str, Any] = {"llm": self.core.llm}
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        try:
            # The message's priority is the lane its model calls take quota in.
            with lane(env.priority):
                run = await _run_agent(env.stage, AGENTS[env.stage], inp, kwargs)
        except ModelRefusal as exc:
            log.warning(
                "%s stage of %s refused by the model: %s",
                env.stage.value,
                env.conversation_id,
                exc.reason_code,
            )
            spent = exc.usage or Usage()
            _token_metrics(env.stage, spent)
            result = None
            if env.stage is Stage.ESCALATION:  # a person must still get the case
                fallback = escalation.fallback_escalation(inp, exc.description).result
                result = fallback.model_dump(mode="json")
            return AgentOutcome(
                result,
                spent,
                after_model_refusal(env.stage, env.revision, exc.description),
                StageError(reason=exc.reason_code, description=exc.description),
            )
        step = next_step(
            env.stage, run.result, revision=env.revision, max_revisions=settings.max_revisions
        )
        _token_metrics(env.stage, run.usage)
        return AgentOutcome(run.result.model_dump(mode="json"), run.usage, step)

    async def _commit(self, cid: str, record: StageRecord, step: Step) -> Conversation:
        """Write the stage record (and, for a final step, the outcome and its outbox entry)
        conditionally; if another delivery won, the conversation holds its record."""

        def add(current: Conversation) -> Conversation | None:
            if record.key in current.stages:
                return None
            return current.with_stage(record, step, now=self.core.clock())

        return await self.core.conversations.update(cid, add)

    async def _forward(self, env: Envelope, step: Step) -> None:
        if isinstance(step, Finish):
            return
        await self.core.outbound.send(
            Envelope(
                message_id=message_id_for(
                    env.conversation_id, step.stage, step.revision, turn=env.turn
                ),
                conversation_id=env.conversation_id,
                customer_id=env.customer_id,
                stage=step.stage,
                revision=step.revision,
                turn=env.turn,
                priority=env.priority,
                batch_id=env.batch_id,
                traceparent=current_traceparent() or env.traceparent,
                created_at=env.created_at,
                sent_at=self.core.clock(),
                payload={"reason": step.reason} if step.reason else {},
            )
        )

    async def _reschedule(
        self, env: Envelope, body: bytes, queue: str, message_id: str, exc: RetryLater
    ) -> Handled:
        """Re-send after ``exc.delay_s`` instead of sleeping under the lock; past the total
        budget, fail the conversation and park the message.

        The budget counts the delays this message has been given (carried in the envelope),
        not the difference of two wall-clock readings, so a clock jump neither spends it nor
        refunds it.
        """
        llm = self.core.settings.llm
        now = self.core.clock()
        at = decide_reschedule(env.waited_s, now, exc.delay_s, llm)
        if at is None:
            budget = BudgetExceeded(total_budget_reason(env.waited_s, env.attempt, llm, exc.reason))
            return await self._give_up(env, body, queue, message_id, budget)
        attempt = env.attempt + 1
        await self.core.outbound.send(_next_attempt(env, attempt, now=now, at=at), scheduled=at)
        log.info(
            "%s of %s rescheduled in %.1fs (attempt %d): %s",
            env.stage.value,
            env.conversation_id,
            exc.delay_s,
            attempt,
            exc.reason,
        )
        return Handled.RESCHEDULED

    async def _give_up(
        self, env: Envelope, body: bytes, queue: str, message_id: str, exc: PermanentError
    ) -> Handled:
        """End the conversation ``failed`` with the reason, then park the message with it."""
        log.warning(
            "%s of %s failed for good: %s", env.stage.value, env.conversation_id, exc.reason_code
        )

        def fail(current: Conversation) -> Conversation | None:
            if current.is_final:
                return None
            return current.failed(
                reason=exc.reason_code, description=exc.description, now=self.core.clock()
            )

        ended: Conversation | None = None
        if await self.core.conversations.get(env.conversation_id) is not None:
            ended = await self.core.conversations.update(env.conversation_id, fail)
        await self.core.outbound.dead_letter(
            queue, body, message_id, exc, conversation_id=env.conversation_id
        )
        if ended is not None:
            # Should this send fail, the message is redelivered, finds the conversation final
            # and sends the pending entry then (the dead letter's id is deterministic too).
            await self._after_outcome(ended)
        return Handled.DEAD_LETTERED


def _next_attempt(env: Envelope, attempt: int, *, now: datetime, at: datetime) -> Envelope:
    """The re-sent copy of ``env``: a new id per attempt, and the budget it has spent."""
    return env.model_copy(
        update={
            "message_id": message_id_for(
                env.conversation_id, env.stage, env.revision, attempt, turn=env.turn
            ),
            "attempt": attempt,
            "first_attempt_at": env.first_attempt_at or env.sent_at,
            "waited_s": env.waited_s + (at - now).total_seconds(),
            "sent_at": now,
        }
    )


async def _run_agent(
    stage: Stage, agent: Agent, inp: AgentInput, kwargs: dict[str, Any]
) -> AgentRun[Any]:
    """Run ``agent``; an error nobody classified is a bug on this input, so it is permanent
    (retrying the same input meets the same bug) and the conversation gets a clear outcome."""
    try:
        return await agent(inp, **kwargs)
    except SwitchboardError:
        raise
    except Exception as exc:
        log.exception("the %s agent raised on this input", stage.value)
        raise AgentCrashed(f"the agent raised {exc.__class__.__name__}") from exc


def _token_metrics(stage: Stage, usage: Usage) -> None:
    """Tokens and cost as metrics, each deployment with only what it served."""
    for deployment, (prompt, completion, cost) in usage.by_deployment.items():
        metrics.tokens(stage.value, deployment, prompt, completion, cost)
