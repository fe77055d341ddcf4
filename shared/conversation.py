"""The conversation document: one per conversation, with every stage's record and the outcome.

Stage records are keyed ``"<stage>:<revision>"``; a record once written is never rewritten,
which is what makes a redelivered message find its work done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.agent_input import AgentInput, Draft
from shared.domain.messages import CustomerRequest, Envelope, Priority, Stage
from shared.domain.results import CriticResult, IntentResult
from shared.domain.routing import Finish, Next, Outcome, Step
from shared.ports import Doc

FINAL_STATUSES = frozenset(o.value for o in Outcome)


def stage_key(stage: Stage, revision: int) -> str:
    return f"{stage.value}:{revision}"


def new_conversation(
    conversation_id: str,
    request: CustomerRequest,
    *,
    priority: Priority,
    batch_id: str | None,
    traceparent: str,
    trace_id: str,
    now: datetime,
) -> Doc:
    """The document recorded when a request is received."""
    doc: Doc = {
        "id": conversation_id,
        "conversationId": conversation_id,
        "customerId": request.customer_id,
        "channel": request.channel.value,
        "priority": priority.value,
        "status": "received",
        "request": {
            "text": request.text,
            "idempotencyKey": request.idempotency_key,
            "metadata": request.metadata or {},
        },
        "traceparent": traceparent,
        "traceId": trace_id,
        "createdAt": now.isoformat(),
        "updatedAt": now.isoformat(),
        "stages": {},
        "tokens": {"total": _zero_tokens()},
        "outcome": None,
    }
    if batch_id:
        doc["batchId"] = batch_id
    return doc


def rejection(
    record_id: str,
    *,
    code: str,
    reason: str,
    customer_id: str | None,
    source: Doc,
    body: Doc,
    now: datetime,
) -> Doc:
    """The record of an input that could not become a conversation.

    ``code`` is the contract's stable reason code (queryable as ``reasonCode``), ``reason``
    names the field and the limit, ``source`` says where the input came from (an event's
    partition:sequence:offset, a blob and its line) and ``body`` holds the input's hash, size
    and a short redacted excerpt, never the input itself.
    """
    return {
        "id": record_id,
        "conversationId": record_id,
        "customerId": customer_id or "unknown",
        "status": Outcome.REJECTED.value,
        "reasonCode": code,
        "source": source,
        "body": body,
        "outcome": {"status": Outcome.REJECTED.value, "code": code, "reason": reason},
        "createdAt": now.isoformat(),
        "updatedAt": now.isoformat(),
        "stages": {},
        "tokens": {"total": _zero_tokens()},
    }


def agent_input(doc: Doc, env: Envelope, *, max_revisions: int) -> AgentInput:
    """What the agent for ``env.stage`` needs, read from the stored conversation."""
    stages: dict[str, Any] = doc.get("stages", {})
    intent_record = stages.get(stage_key(Stage.INTENT, 0))
    intent = (
        IntentResult.model_validate(intent_record["result"])
        if intent_record and intent_record.get("result")
        else None
    )
    drafts: list[Draft] = []
    upto = env.revision if env.stage is Stage.RESPONSE else env.revision + 1
    for revision in range(upto):
        drafted = stages.get(stage_key(Stage.RESPONSE, revision))
        if not drafted or not drafted.get("result"):
            continue
        reviewed = stages.get(stage_key(Stage.CRITIC, revision))
        review = (
            CriticResult.model_validate(reviewed["result"])
            if reviewed and reviewed.get("result")
            else None
        )
        drafts.append(Draft(revision=revision, reply=drafted["result"]["reply"], review=review))
    return AgentInput(
        conversation_id=doc["conversationId"],
        customer_id=doc["customerId"],
        channel=doc.get("channel", "chat"),
        text=doc["request"]["text"],
        revision=env.revision,
        max_revisions=max_revisions,
        intent=intent,
        drafts=tuple(drafts),
        escalation_reason=str(env.payload.get("reason", "")),
    )


def apply_stage(doc: Doc, record: Doc, step: Step, *, now: datetime) -> Doc:
    """A copy of ``doc`` with the stage record, its tokens and, when final, the outcome."""
    new = {k: v for k, v in doc.items() if not k.startswith("_")}
    stages = dict(new.get("stages", {}))
    record = {**record, "seq": len(stages)}
    stages[record["key"]] = record
    new["stages"] = stages
    new["tokens"] = _add_tokens(new.get("tokens", {}), record["stage"], record.get("usage", {}))
    new["updatedAt"] = now.isoformat()
    if isinstance(step, Finish):
        new["status"] = step.outcome.value
        new["outcome"] = _outcome(new, record, step, now)
    else:
        new["status"] = "in_progress"
    return new


def mark_failed(doc: Doc, *, reason: str, description: str, now: datetime) -> Doc:
    new = {k: v for k, v in doc.items() if not k.startswith("_")}
    new["status"] = Outcome.FAILED.value
    new["outcome"] = {
        "status": Outcome.FAILED.value,
        "reason": reason,
        "description": description,
        "at": now.isoformat(),
    }
    new["updatedAt"] = now.isoformat()
    return new


def _outcome(doc: Doc, record: Doc, step: Finish, now: datetime) -> dict[str, Any]:
    outcome: dict[str, Any] = {"status": step.outcome.value, "at": now.isoformat()}
    if step.reason:
        outcome["reason"] = step.reason
    if step.outcome is Outcome.ANSWERED:
        drafted = doc["stages"].get(stage_key(Stage.RESPONSE, record["revision"]))
        outcome["reply"] = drafted["result"]["reply"] if drafted else ""
        outcome["revisions"] = record["revision"]
    elif step.outcome is Outcome.ESCALATED and record.get("result"):
        result = record["result"]
        outcome.update(
            team=result["team"],
            priority=result["priority"],
            reason=result["reason"],
            summary=result["summary"],
        )
    return outcome


def _zero_tokens() -> dict[str, float]:
    return {"promptTokens": 0, "completionTokens": 0, "costUsd": 0.0, "calls": 0}


def _add_tokens(tokens: dict[str, Any], stage: str, usage: dict[str, Any]) -> dict[str, Any]:
    result = {k: dict(v) for k, v in tokens.items()}
    for bucket in (stage, "total"):
        entry = result.setdefault(bucket, _zero_tokens())
        for field in ("promptTokens", "completionTokens", "calls"):
            entry[field] = int(entry.get(field, 0)) + int(usage.get(field, 0))
        entry["costUsd"] = round(
            float(entry.get("costUsd", 0.0)) + float(usage.get("costUsd", 0.0)), 8
        )
    return result


def next_of(record: Doc) -> Step:
    """The routing decision stored in a stage record."""
    nxt = record["next"]
    if "stage" in nxt:
        return Next(Stage(nxt["stage"]), int(nxt["revision"]), str(nxt.get("reason", "")))
    return Finish(Outcome(nxt["outcome"]), str(nxt.get("reason", "")))
