"""Ingest: every event and every batch row ends as exactly one record, at once.

A valid request becomes a conversation and its first message; anything else becomes a
rejection with the request contract's reason code. The batch id derives from the blob name and
etag and a conversation id from the idempotency key or the delivery's identity, so a
redelivered event or blob finds its records again instead of duplicating them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field

from shared.domain.batch_documents import DocumentRejected, ParsedItem, parse_document
from shared.domain.conversation import RECEIVED, BodySummary, Conversation, RejectionSource
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
    turn_key_for,
)
from shared.domain.request_contract import (
    RejectionCode,
    RequestRejected,
    body_digest,
    body_excerpt,
    customer_hint,
    judge,
)
from shared.domain.turns import MAX_TURNS, FollowUp
from shared.errors import Conflict, TransientError
from shared.ports import Doc
from shared.service.admission import RateLimiter
from shared.service.core import Core
from shared.telemetry import current_traceparent, metrics, new_traceparent, stage_span, trace_id_of

log = logging.getLogger(__name__)

INGEST_CONCURRENCY = 16


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
class HttpVerdict:
    """What became of one ``POST /api/requests``: ``status`` is ``accepted`` (the
    conversation ``record_id``), ``rejected`` (the rejection ``record_id``, ``code``) or
    ``rate_limited`` (``retry_after`` whole seconds)."""

    status: str
    record_id: str = ""
    code: str = ""
    reason: str = ""
    retry_after: str = ""


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    status: str
    accepted: int
    rejected: int
    reason: str = ""


class Ingest:
    """The ways in: hub events and batch documents."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.limiter = RateLimiter(core)

    async def events(self, events: Sequence[IncomingEvent]) -> IngestReport:
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
                    await self._reject(
                        rejection_id_for(event.identity),
                        verdict,
                        body=event.body,
                        source=RejectionSource(kind="event", event=event.identity),
                    )
                    report.rejected.append((event.identity, verdict.code.value))
                    metrics.rejected("event", verdict.code.value)
                    return
                limited = await self._over_limit(verdict, event)
                if limited is not None:
                    report.rejected.append((event.identity, limited.code.value))
                    return
                started = await self._start(
                    verdict,
                    fallback_identity=event_fallback(event.identity),
                    priority=Priority.INTERACTIVE,
                    batch_id=None,
                    producer_traceparent=event.traceparent,
                )
                if isinstance(started, RequestRejected):
                    await self._reject(
                        rejection_id_for(event.identity),
                        started,
                        body=event.body,
                        source=RejectionSource(kind="event", event=event.identity),
                    )
                    report.rejected.append((event.identity, started.code.value))
                    return
                report.accepted.append(started)

        await run_all(one(e) for e in events)
        if report.rejected:
            log.warning("ingest rejected %d of %d events", len(report.rejected), len(events))
        return report

    async def _over_limit(
        self, request: CustomerRequest, event: IncomingEvent
    ) -> RequestRejected | None:
        """The rejection of a hub event over its customer's rate, recorded; None to go on.

        A redelivered event keeps its first verdict: one that became a conversation is not
        counted again, one recorded as rate-limited stays so (an event is one record). With
        no limit set, nothing is read."""
        if self.limiter.policy.unlimited:
            return None
        if await self._seen(request, event_fallback(event.identity)):
            return None
        record_id = rejection_id_for(event.identity)
        earlier = await self.core.conversations.get(record_id)
        if earlier is not None and earlier.reason_code == RejectionCode.RATE_LIMITED.value:
            return RequestRejected(RejectionCode.RATE_LIMITED, "recorded earlier")
        admission = await self.limiter.admit(request.customer_id)
        if admission.admitted:
            return None
        rejected = RequestRejected(
            RejectionCode.RATE_LIMITED,
            f"customer over {self.limiter.policy.per_second * 60:g} requests a minute "
            f"(burst {self.limiter.policy.capacity:g}); a token is due in "
            f"{admission.retry_after_s:.1f}s",
        )
        await self._reject(
            record_id,
            rejected,
            body=event.body,
            source=RejectionSource(kind="event", event=event.identity),
        )
        metrics.rejected("event", rejected.code.value)
        return rejected

    async def http(self, body: bytes, *, request_id: str, traceparent: str | None) -> HttpVerdict:
        """One ``POST /api/requests``: the same contract as a hub event, then the customer's
        rate; a request with an idempotency key already received is accepted again (the same
        conversation) without taking a token."""
        verdict = judge(body)
        if isinstance(verdict, RequestRejected):
            record_id = rejection_id_for(f"http:{request_id}")
            await self._reject(
                record_id,
                verdict,
                body=body,
                source=RejectionSource(kind="http", event=request_id),
            )
            metrics.rejected("http", verdict.code.value)
            return HttpVerdict("rejected", record_id, verdict.code.value, verdict.description)
        fallback = f"http:{request_id}"
        if not self.limiter.policy.unlimited and not await self._seen(verdict, fallback):
            admission = await self.limiter.admit(verdict.customer_id)
            if not admission.admitted:
                metrics.rejected("http", RejectionCode.RATE_LIMITED.value)
                return HttpVerdict(
                    "rate_limited",
                    code=RejectionCode.RATE_LIMITED.value,
                    reason="too many requests for this customer",
                    retry_after=admission.retry_after_header,
                )
        started = await self._start(
            verdict,
            fallback_identity=fallback,
            priority=Priority.INTERACTIVE,
            batch_id=None,
            producer_traceparent=traceparent,
        )
        if isinstance(started, RequestRejected):
            record_id = rejection_id_for(f"http:{request_id}")
            await self._reject(
                record_id, started, body=body, source=RejectionSource(kind="http", event=request_id)
            )
            return HttpVerdict("rejected", record_id, started.code.value, started.description)
        return HttpVerdict("accepted", started)

    async def document(self, name: str, etag: str, data: bytes) -> BatchReport:
        """Turn a batch document into one record per item, counted in a batch record."""
        batch_id = "b-" + short_hash("batch", name, etag)
        record: Doc = {
            "id": batch_id,
            "batchId": batch_id,
            "blobName": name,
            "etag": etag,
            "sizeBytes": len(data),
            "createdAt": self.core.clock().isoformat(),
        }
        batches = self.core.settings.batches_container
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
                completedAt=self.core.clock().isoformat(),
            )
            await self.core.store.upsert(batches, record)
            metrics.rejected("batch", exc.code.value)
            log.warning("batch %s rejected: %s", batch_id, exc.code.value)
            return BatchReport(batch_id, "rejected", 0, 0, exc.description)

        gate = asyncio.Semaphore(INGEST_CONCURRENCY)
        refused: dict[int, RequestRejected] = {}
        """Lines the contract took but ingest refused (a follow-up of no conversation)."""

        async def one(item: ParsedItem) -> None:
            async with gate:
                refusal = await self._batch_item(item, batch_id=batch_id, blob=name)
                if refusal is not None and item.request is not None:
                    refused[item.line] = refusal

        await run_all(one(item) for item in items)
        rejected = [
            {"line": i.line, "code": i.code, "reason": i.reason} for i in items if i.request is None
        ] + [
            {"line": line, "code": exc.code.value, "reason": exc.description}
            for line, exc in sorted(refused.items())
        ]
        record.update(
            status="accepted",
            format=fmt,
            total=len(items),
            accepted=len(items) - len(rejected),
            rejected=len(rejected),
            rejectedByCode=dict(Counter(r["code"] for r in rejected)),
            rejections=rejected[:200],
            completedAt=self.core.clock().isoformat(),
        )
        await self.core.store.upsert(batches, record)
        return BatchReport(batch_id, "accepted", len(items) - len(rejected), len(rejected))

    async def _batch_item(
        self, item: ParsedItem, *, batch_id: str, blob: str
    ) -> RequestRejected | None:
        """One row of a batch document: a conversation, or a rejection naming file and line
        (returned as well)."""
        refusal: RequestRejected | None = None
        if item.request is None:
            refusal = RequestRejected(RejectionCode(item.code), item.reason)
        else:
            started = await self._start(
                item.request,
                fallback_identity=f"{batch_id}:{item.line}",
                priority=Priority.BATCH,
                batch_id=batch_id,
                producer_traceparent=None,
            )
            if isinstance(started, RequestRejected):
                refusal = started
        if refusal is not None:
            await self._reject(
                rejection_id_for(f"{batch_id}:{item.line}"),
                refusal,
                body=item.raw.encode("utf-8", "surrogatepass"),
                source=RejectionSource(kind="batch", batch_id=batch_id, blob=blob, line=item.line),
                batch_id=batch_id,
            )
        return refusal

    async def _seen(self, request: CustomerRequest, fallback: str) -> bool:
        """Whether this very request was taken in before (a redelivery, a repeated key): a
        conversation it started, or a turn it became."""
        if request.conversation_id:
            conversation = await self.core.conversations.get(request.conversation_id)
            key = turn_key_for(request.conversation_id, request.idempotency_key, fallback=fallback)
            return conversation is not None and conversation.turn_of(key) is not None
        cid = conversation_id_for(request.customer_id, request.idempotency_key, fallback=fallback)
        return await self.core.conversations.get(cid) is not None

    async def _follow_up(
        self, request: CustomerRequest, *, fallback_identity: str, traceparent: str | None
    ) -> str | RequestRejected:
        """A turn of an existing conversation of this customer (``shared.domain.turns``)."""
        cid = str(request.conversation_id)
        conversation = await self.core.conversations.get(cid)
        if (
            conversation is None
            or conversation.request is None
            or conversation.customer_id != request.customer_id
        ):
            return RequestRejected(
                RejectionCode.UNKNOWN_CONVERSATION,
                "conversationId names no conversation of this customer",
            )
        key = turn_key_for(cid, request.idempotency_key, fallback=fallback_identity)
        now = self.core.clock()
        taken: list[tuple[FollowUp, int]] = []

        def add(current: Conversation) -> Conversation | None:
            changed, what, turn = current.follow_up(request, key, now=now)
            taken.append((what, turn))
            return changed

        written = await self.core.conversations.update(cid, add)
        what, turn = taken[-1]
        if what is FollowUp.FULL:
            return RequestRejected(
                RejectionCode.CONVERSATION_FULL,
                f"the conversation has its {MAX_TURNS} turns; start a new one",
            )
        log.info("conversation %s: follow-up turn %d %s", cid, turn, what.value)
        if written.turn == turn and written.status == RECEIVED:
            await self.core.outbound.send(
                written.first_message(now=now, traceparent=traceparent or current_traceparent())
            )
        return cid

    async def _start(
        self,
        request: CustomerRequest,
        *,
        fallback_identity: str,
        priority: Priority,
        batch_id: str | None,
        producer_traceparent: str | None,
    ) -> str | RequestRejected:
        """A new conversation and its first message; a follow-up (``conversationId``) is a
        new turn of its conversation instead, or refused when that is not this customer's."""
        if request.conversation_id:
            return await self._follow_up(
                request, fallback_identity=fallback_identity, traceparent=producer_traceparent
            )
        cid = conversation_id_for(
            request.customer_id, request.idempotency_key, fallback=fallback_identity
        )
        # A producer's trace is continued; otherwise the conversation starts its own trace.
        parent = producer_traceparent or new_traceparent()
        with stage_span("ingest", traceparent=parent, conversation_id=cid, stage="ingest"):
            traceparent = current_traceparent() or parent
            now = self.core.clock()
            conversation = Conversation.received(
                cid,
                request,
                priority=priority,
                batch_id=batch_id,
                traceparent=traceparent,
                trace_id=trace_id_of(traceparent),
                now=now,
            )
            try:
                await self.core.conversations.create(conversation)
            except Conflict:
                existing = await self.core.conversations.get(cid)
                if existing is None:
                    raise TransientError("conversation vanished after a conflict") from None
                conversation = existing
                log.info("conversation %s already received; re-sending its first message", cid)
            await self.core.outbound.send(
                Envelope(
                    message_id=message_id_for(cid, Stage.INTENT, 0),
                    conversation_id=cid,
                    customer_id=request.customer_id,
                    stage=Stage.INTENT,
                    revision=0,
                    priority=priority,
                    batch_id=batch_id,
                    traceparent=conversation.traceparent or traceparent or None,
                    created_at=conversation.created_at,
                    sent_at=now,
                )
            )
        return cid

    async def _reject(
        self,
        record_id: str,
        rejected: RequestRejected,
        *,
        body: bytes,
        source: RejectionSource,
        batch_id: str | None = None,
    ) -> None:
        await self.core.conversations.put(
            Conversation.rejected(
                record_id,
                code=rejected.code.value,
                reason=rejected.description,
                customer_id=customer_hint(body),
                source=source,
                body=BodySummary(
                    sha256=body_digest(body), bytes=len(body), excerpt=body_excerpt(body)
                ),
                batch_id=batch_id,
                now=self.core.clock(),
            )
        )


async def run_all(work: Iterable[Awaitable[None]]) -> None:
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
