"""The pipeline's use cases: ingest requests and documents, run a stage, answer queries.

Every write is keyed and conditional (DESIGN §3): a redelivered message finds its stage record,
re-sends the next message under the same deterministic id (duplicate detection drops it) and
completes. Nothing here knows which transport or store it runs on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from shared import conversation as conv
from shared.agents import critic, escalation, intent, response
from shared.agents.structured import AgentRun, Usage
from shared.config import Settings
from shared.domain.agent_input import AgentInput
from shared.domain.batch_documents import MAX_ITEMS, DocumentRejected, ParsedItem, parse_document
from shared.domain.messages import (
    CustomerRequest,
    Envelope,
    Priority,
    Stage,
    conversation_id_for,
    event_fallback,
    message_id_for,
    rejection_id_for,
    short_hash,
    utcnow,
)
from shared.domain.request_contract import (
    RejectionCode,
    RequestRejected,
    body_digest,
    body_excerpt,
    customer_hint,
    judge,
)
from shared.domain.routing import Finish, Outcome, Step, after_model_refusal, next_step
from shared.errors import (
    AgentCrashed,
    BudgetExceeded,
    Conflict,
    InvalidInput,
    ModelRefusal,
    PermanentError,
    PreconditionFailed,
    RetryLater,
    SwitchboardError,
    TransientError,
)
from shared.llm.budget import decide_reschedule, total_budget_reason, transient_delay
from shared.ports import ChatModel, Doc, DocumentStore, OutboundMessage, Publisher
from shared.telemetry import (
    current_traceparent,
    metrics,
    new_traceparent,
    stage_span,
    trace_id_of,
)

log = logging.getLogger(__name__)

Agent = Callable[..., Awaitable[AgentRun[Any]]]
AGENTS: dict[Stage, Agent] = {
    Stage.INTENT: intent.run,
    Stage.RESPONSE: response.run,
    Stage.CRITIC: critic.run,
    Stage.ESCALATION: escalation.run,
}
INGEST_CONCURRENCY = 16
WRITE_ATTEMPTS = 8
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
class IncomingEvent:
    """One event from the request hub. ``identity`` is stable across redeliveries."""

    body: bytes
    identity: str
    traceparent: str | None = None


@dataclass
class IngestReport:
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    status: str
    accepted: int
    rejected: int
    reason: str = ""


class Pipeline:
    """The core. Built once per process by ``shared.bootstrap``; every dependency is a port."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: DocumentStore,
        publisher: Publisher,
        llm: ChatModel,
        clock: Callable[[], datetime] = utcnow,
        max_delivery_count: int = MAX_DELIVERY_COUNT,
    ) -> None:
        self.settings = settings
        self.max_delivery_count = max_delivery_count
        self.store = store
        self.publisher = publisher
        self.llm = llm
        self.clock = clock
        self._conversations = settings.conversations_container
        self._batches = settings.batches_container

    # ------------------------------------------------------------------ ingest

    async def ingest_events(self, events: Sequence[IncomingEvent]) -> IngestReport:
        """Give every event exactly one record: a conversation, or a rejection with its code.

        No content of an event can make this raise (the contract's verdict is total), so no
        content can start the trigger's retries or stall the partition. It raises only when
        the store or the queue fails; the platform then retries the whole batch, and what was
        already recorded is found again, not duplicated.
        """
        report = IngestReport()
        gate = asyncio.Semaphore(INGEST_CONCURRENCY)

        async def one(event: IncomingEvent) -> None:
            async with gate:
                verdict = judge(event.body)
                if isinstance(verdict, RequestRejected):
                    await self._record_rejection(
                        rejection_id_for(event.identity),
                        verdict,
                        body=event.body,
                        source={"kind": "event", "event": event.identity},
                    )
                    report.rejected.append((event.identity, verdict.code.value))
                    metrics.rejected("event", verdict.code.value)
                    return
                cid = await self._start(
                    verdict,
                    fallback_identity=event_fallback(event.identity),
                    priority=Priority.INTERACTIVE,
                    batch_id=None,
                    producer_traceparent=event.traceparent,
                )
                report.accepted.append(cid)

        await _all(one(e) for e in events)
        if report.rejected:
            log.warning("ingest rejected %d of %d events", len(report.rejected), len(events))
        return report

    async def ingest_document(self, name: str, etag: str, data: bytes) -> BatchReport:
        """Turn a batch document into one conversation per valid item, counted in a batch record.

        The batch id derives from the blob name and etag, so a redelivered blob is the same
        batch and every item the same conversation.
        """
        batch_id = "b-" + short_hash("batch", name, etag)
        now = self.clock()
        record: Doc = {
            "id": batch_id,
            "batchId": batch_id,
            "blobName": name,
            "etag": etag,
            "sizeBytes": len(data),
            "createdAt": now.isoformat(),
        }
        try:
            fmt, items = parse_document(name, data)
        except DocumentRejected as exc:
            record.update(
                status="rejected",
                code=exc.code.value,
                reason=exc.description,
                total=0,
                accepted=0,
                rejected=0,
                completedAt=self.clock().isoformat(),
            )
            await self.store.upsert(self._batches, record)
            metrics.rejected("batch", exc.code.value)
            log.warning("batch %s rejected: %s", batch_id, exc.code.value)
            return BatchReport(batch_id, "rejected", 0, 0, exc.description)

        gate = asyncio.Semaphore(INGEST_CONCURRENCY)

        async def one(item: ParsedItem) -> None:
            async with gate:
                if item.request is None:
                    await self._record_rejection(
                        rejection_id_for(f"{batch_id}:{item.line}"),
                        RequestRejected(RejectionCode(item.code), item.reason),
                        body=item.raw.encode("utf-8", "surrogatepass"),
                        source={
                            "kind": "batch",
                            "batchId": batch_id,
                            "blob": name,
                            "line": item.line,
                        },
                        batch_id=batch_id,
                    )
                    return
                await self._start(
                    item.request,
                    fallback_identity=f"{batch_id}:{item.line}",
                    priority=Priority.BATCH,
                    batch_id=batch_id,
                    producer_traceparent=None,
                )

        await _all(one(item) for item in items)
        rejected = [
            {"line": i.line, "code": i.code, "reason": i.reason} for i in items if i.request is None
        ]
        record.update(
            status="accepted",
            format=fmt,
            total=len(items),
            accepted=len(items) - len(rejected),
            rejected=len(rejected),
            rejectedByCode=dict(Counter(r["code"] for r in rejected)),
            rejections=rejected[:200],
            completedAt=self.clock().isoformat(),
        )
        await self.store.upsert(self._batches, record)
        return BatchReport(batch_id, "accepted", len(items) - len(rejected), len(rejected))

    async def _start(
        self,
        request: CustomerRequest,
        *,
        fallback_identity: str,
        priority: Priority,
        batch_id: str | None,
        producer_traceparent: str | None,
    ) -> str:
        cid = conversation_id_for(
            request.customer_id, request.idempotency_key, fallback=fallback_identity
        )
        # A producer's trace is continued; otherwise the conversation starts its own trace.
        parent = producer_traceparent or new_traceparent()
        with stage_span("ingest", traceparent=parent, conversation_id=cid, stage="ingest"):
            traceparent = current_traceparent() or parent
            now = self.clock()
            doc = conv.new_conversation(
                cid,
                request,
                priority=priority,
                batch_id=batch_id,
                traceparent=traceparent,
                trace_id=trace_id_of(traceparent),
                now=now,
            )
            try:
                await self.store.create(self._conversations, doc)
            except Conflict:
                existing = await self.store.read(self._conversations, cid, partition_key=cid)
                if existing is None:
                    raise TransientError("conversation vanished after a conflict") from None
                doc = existing
                log.info("conversation %s already received; re-sending its first message", cid)
            env = Envelope(
                message_id=message_id_for(cid, Stage.INTENT, 0),
                conversation_id=cid,
                customer_id=request.customer_id,
                stage=Stage.INTENT,
                revision=0,
                priority=priority,
                batch_id=batch_id,
                traceparent=doc.get("traceparent") or traceparent or None,
                created_at=datetime.fromisoformat(doc["createdAt"]),
                sent_at=now,
            )
            await self._send(env)
        return cid

    async def _record_rejection(
        self,
        record_id: str,
        rejected: RequestRejected,
        *,
        body: bytes,
        source: Doc,
        batch_id: str | None = None,
    ) -> None:
        doc = conv.rejection(
            record_id,
            code=rejected.code.value,
            reason=rejected.description,
            customer_id=customer_hint(body),
            source=source,
            body={"sha256": body_digest(body), "bytes": len(body), "excerpt": body_excerpt(body)},
            now=self.clock(),
        )
        if batch_id:
            doc["batchId"] = batch_id
        await self.store.upsert(self._conversations, doc)

    # ------------------------------------------------------------------ stages

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
        queue = self.settings.queues.for_stage(stage)
        try:
            env = Envelope.from_bytes(body)
            if env.stage is not stage:
                raise InvalidInput(f"a {env.stage.value} message arrived on queue {queue!r}")
        except InvalidInput as exc:
            await self._dead_letter(queue, body, message_id, exc, conversation_id=None)
            return Handled.DEAD_LETTERED
        with stage_span(
            f"{env.stage.value} agent",
            traceparent=env.traceparent,
            conversation_id=env.conversation_id,
            stage=env.stage.value,
            attributes={"messaging.message.id": message_id, "delivery_count": delivery_count},
        ):
            try:
                return await self._run_stage(env, body, queue, message_id)
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

    async def _give_up(
        self, env: Envelope, body: bytes, queue: str, message_id: str, exc: PermanentError
    ) -> Handled:
        """End the conversation ``failed`` with the reason, then park the message with it."""
        log.warning(
            "%s of %s failed for good: %s", env.stage.value, env.conversation_id, exc.reason_code
        )
        await self._fail(env.conversation_id, exc)
        await self._dead_letter(queue, body, message_id, exc, conversation_id=env.conversation_id)
        return Handled.DEAD_LETTERED

    async def _run_stage(self, env: Envelope, body: bytes, queue: str, message_id: str) -> Handled:
        cid = env.conversation_id
        doc = await self.store.read(self._conversations, cid, partition_key=cid)
        if doc is None:
            exc = InvalidInput(f"conversation {cid} does not exist")
            await self._dead_letter(queue, body, message_id, exc, conversation_id=cid)
            return Handled.DEAD_LETTERED
        key = conv.stage_key(env.stage, env.revision)
        record = doc.get("stages", {}).get(key)
        if record is not None:
            await self._forward(env, conv.next_of(record))
            return Handled.REPLAYED
        if doc.get("status") in conv.FINAL_STATUSES:
            log.info("conversation %s already %s; %s is stale", cid, doc["status"], key)
            return Handled.STALE

        started = self.clock()
        inp = conv.agent_input(doc, env, max_revisions=self.settings.max_revisions)
        try:
            result, usage, step, error = await self._call_agent(env, inp)
        except BudgetExceeded as exc:
            result, usage, step = None, {}, Finish(Outcome.REJECTED, exc.description)
            error = {"reason": exc.reason_code, "description": exc.description}
        here = current_traceparent()
        record = {
            "key": key,
            "stage": env.stage.value,
            "revision": env.revision,
            "messageId": message_id,
            "traceId": trace_id_of(here) if here else "",
            "result": result,
            "usage": usage,
            "next": step.as_dict(),
            "startedAt": started.isoformat(),
            "completedAt": self.clock().isoformat(),
        }
        if error:
            record["error"] = error
        stored = await self._commit(cid, doc, record, step)
        metrics.stage_completed(
            env.stage.value,
            stored["next"].get("outcome", "forwarded"),
            (self.clock() - started).total_seconds(),
        )
        await self._forward(env, conv.next_of(stored))
        return Handled.DONE

    async def _call_agent(
        self, env: Envelope, inp: AgentInput
    ) -> tuple[dict[str, Any] | None, dict[str, Any], Step, dict[str, str] | None]:
        max_tokens = self.settings.llm.max_tokens.get(env.stage)
        kwargs: dict[str, Any] = {"llm": self.llm}
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        try:
            run = await _run_agent(env.stage, AGENTS[env.stage], inp, kwargs)
        except ModelRefusal as exc:
            error = {"reason": exc.reason_code, "description": exc.description}
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
                result = _dump(escalation.fallback_escalation(inp, exc.description).result)
            step = after_model_refusal(env.stage, env.revision, exc.description)
            return result, spent.as_dict(), step, error
        step = next_step(
            env.stage, run.result, revision=env.revision, max_revisions=self.settings.max_revisions
        )
        _token_metrics(env.stage, run.usage)
        return _dump(run.result), run.usage.as_dict(), step, None

    async def _commit(self, cid: str, doc: Doc, record: Doc, step: Step) -> Doc:
        """Write the stage record conditionally; if another delivery won, use its record."""
        key = record["key"]

        def add_record(current: Doc) -> Doc | None:
            if key in current.get("stages", {}):
                return None
            return conv.apply_stage(current, record, step, now=self.clock())

        written = await self._update(cid, doc, add_record)
        return dict(written["stages"][key])

    async def _update(self, cid: str, doc: Doc, change: Callable[[Doc], Doc | None]) -> Doc:
        """Apply ``change`` to the freshest copy of the conversation until the conditional
        write lands; ``change`` returns None when there is nothing (left) to do."""
        for _ in range(WRITE_ATTEMPTS):
            updated = change(doc)
            if updated is None:
                return doc
            try:
                await self.store.replace(self._conversations, updated, etag=doc["_etag"])
                return updated
            except PreconditionFailed:
                fresh = await self.store.read(self._conversations, cid, partition_key=cid)
                if fresh is None:
                    raise TransientError(f"conversation {cid} vanished during a write") from None
                doc = fresh
        raise TransientError(f"conversation {cid}: write contention, giving up for now")

    async def _forward(self, env: Envelope, step: Step) -> None:
        if isinstance(step, Finish):
            return
        await self._send(
            Envelope(
                message_id=message_id_for(env.conversation_id, step.stage, step.revision),
                conversation_id=env.conversation_id,
                customer_id=env.customer_id,
                stage=step.stage,
                revision=step.revision,
                priority=env.priority,
                batch_id=env.batch_id,
                traceparent=current_traceparent() or env.traceparent,
                created_at=env.created_at,
                sent_at=self.clock(),
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
        now = self.clock()
        at = decide_reschedule(env.waited_s, now, exc.delay_s, self.settings.llm)
        if at is None:
            budget = BudgetExceeded(
                total_budget_reason(env.waited_s, env.attempt, self.settings.llm, exc.reason)
            )
            return await self._give_up(env, body, queue, message_id, budget)
        attempt = env.attempt + 1
        await self._send(
            env.model_copy(
                update={
                    "message_id": message_id_for(
                        env.conversation_id, env.stage, env.revision, attempt
                    ),
                    "attempt": attempt,
                    "first_attempt_at": env.first_attempt_at or env.sent_at,
                    "waited_s": env.waited_s + (at - now).total_seconds(),
                    "sent_at": now,
                }
            ),
            scheduled=at,
        )
        log.info(
            "%s of %s rescheduled in %.1fs (attempt %d): %s",
            env.stage.value,
            env.conversation_id,
            exc.delay_s,
            attempt,
            exc.reason,
        )
        return Handled.RESCHEDULED

    async def _fail(self, cid: str, exc: PermanentError) -> None:
        doc = await self.store.read(self._conversations, cid, partition_key=cid)
        if doc is None:
            return

        def fail(current: Doc) -> Doc | None:
            if current.get("status") in conv.FINAL_STATUSES:
                return None
            return conv.mark_failed(
                current, reason=exc.reason_code, description=exc.description, now=self.clock()
            )

        await self._update(cid, doc, fail)

    # ------------------------------------------------------------------ transport

    async def _send(self, env: Envelope, *, scheduled: datetime | None = None) -> None:
        await self.publisher.send(
            OutboundMessage(
                queue=self.settings.queues.for_stage(env.stage),
                body=env.to_bytes(),
                message_id=env.message_id,
                correlation_id=env.conversation_id,
                subject=env.stage.value,
                application_properties=_properties(env),
                scheduled_enqueue_time=scheduled,
            )
        )

    async def _dead_letter(
        self,
        queue: str,
        body: bytes,
        message_id: str,
        exc: PermanentError,
        *,
        conversation_id: str | None,
    ) -> None:
        """Park the message, body intact, on the dead-letter queue with its reason."""
        await self.publisher.send(
            OutboundMessage(
                queue=self.settings.queues.deadletter,
                body=body,
                message_id="dl-" + short_hash(queue, message_id, length=32),
                correlation_id=conversation_id or "",
                subject="deadletter",
                application_properties={
                    "DeadLetterReason": exc.reason_code,
                    "DeadLetterErrorDescription": exc.description[:1024],
                    "OriginalQueue": queue,
                    "OriginalMessageId": message_id,
                    "DeadLetteredAt": self.clock().isoformat(),
                },
            )
        )
        metrics.deadlettered(queue, exc.reason_code)
        log.warning("message %s from %s dead-lettered: %s", message_id, queue, exc.reason_code)

    # ------------------------------------------------------------------ queries

    async def conversation(self, conversation_id: str) -> Doc | None:
        doc = await self.store.read(
            self._conversations, conversation_id, partition_key=conversation_id
        )
        if doc is None:
            return None
        view = {k: v for k, v in doc.items() if not k.startswith("_")}
        view["stages"] = sorted(doc.get("stages", {}).values(), key=lambda r: r.get("seq", 0))
        return view

    async def batch(self, batch_id: str) -> Doc | None:
        record = await self.store.read(self._batches, batch_id, partition_key=batch_id)
        if record is None:
            return None
        members = await self.store.query_eq(
            self._conversations, "batchId", batch_id, limit=MAX_ITEMS
        )
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        view["statuses"] = dict(Counter(str(m.get("status")) for m in members))
        return view

    async def readiness(self) -> dict[str, str]:
        """Which dependencies answer; raises nothing."""
        checks: dict[str, str] = {}
        try:
            await self.store.ping()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unreachable: {exc.__class__.__name__}"
        return checks


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


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Run every piece of ``work`` to its end, then raise the first failure, if any.

    Every event (or row) is given its chance to be recorded before a store or queue fault
    makes the platform retry the batch; what was recorded is found again on the retry.
    """
    outcomes = await asyncio.gather(*work, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        log.error(
            "could not record %d of %d items (%s); the batch will be retried",
            len(failures),
            len(outcomes),
            failures[0].__class__.__name__,
        )
        metrics.ingest_failed(len(failures))
        raise failures[0]


def _token_metrics(stage: Stage, usage: Usage) -> None:
    """Tokens and cost as metrics, each deployment with only what it served."""
    for deployment, (prompt, completion, cost) in usage.by_deployment.items():
        metrics.tokens(stage.value, deployment, prompt, completion, cost)


def _dump(result: BaseModel) -> dict[str, Any]:
    return result.model_dump(mode="json")


def _properties(env: Envelope) -> dict[str, str | int]:
    props: dict[str, str | int] = {
        "conversationId": env.conversation_id,
        "stage": env.stage.value,
        "revision": env.revision,
        "priority": env.priority.value,
        "attempt": env.attempt,
    }
    if env.traceparent:
        props["traceparent"] = env.traceparent
    if env.batch_id:
        props["batchId"] = env.batch_id
    return props
