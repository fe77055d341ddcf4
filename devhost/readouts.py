"""What devhost's read commands print with ``--json``: one JSON document on stdout.

Every read command (``status``, ``conversations``, ``rejections``, ``batches``, ``show``,
``dlq list``, ``escalations list|show``, ``outbox``, ``dashboard``, ``doctor``) takes
``--json``. stdout then
carries exactly one JSON document (an object) and nothing else; messages (no state here, an
unknown id) go to stderr, and the exit status is the same as without ``--json``. Keys are
camelCase like the stored documents and the HTTP API, and are listed in each command's
``--help`` from the tuples below, which tests hold the output to: a key is added, never renamed
or removed, and a missing value is ``null``.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from devhost.broker import Broker, ReceivedMessage
from devhost.doctor import STATE_FILES, check
from devhost.environment import Workdir, running_host
from devhost.lifeline import ProcessRecord
from devhost.simulator.config import ADMIN_KEY_HEADER
from shared.adapters.local.sqlite import can_write
from shared.config import Settings
from shared.domain.conversation import Conversation
from shared.domain.workitem import WorkItem

STATUS_KEYS = ("workdir", "running", "pid", "http", "entities", "deadLetters", "models")
MODEL_KEYS = ("deployment", "requests", "succeeded", "throttled", "faultsInjected", "faults")
ENTITY_KEYS = (
    "name",
    "kind",
    "backlog",
    "scheduled",
    "inFlight",
    "deadLettered",
    "function",
    "instances",
    "ceiling",
    "boundBy",
    "quotaCap",
    "secondsPerInvocation",
    "tokensPerInvocation",
)
CONVERSATION_KEYS = (
    "id",
    "status",
    "intent",
    "customerId",
    "channel",
    "createdAt",
    "seconds",
    "revisions",
    "calls",
    "promptTokens",
    "completionTokens",
    "costUsd",
    "detail",
)
REJECTION_KEYS = ("id", "createdAt", "source", "code", "reason", "excerpt")
BATCH_KEYS = (
    "id",
    "blobName",
    "status",
    "total",
    "accepted",
    "rejected",
    "rejectedByCode",
    "code",
    "reason",
)
DEAD_LETTER_KEYS = (
    "queue",
    "parked",
    "messageId",
    "originalQueue",
    "reason",
    "description",
    "deliveries",
)
WORK_ITEM_KEYS = (
    "id",
    "conversationId",
    "team",
    "priority",
    "status",
    "claimedBy",
    "createdAt",
    "dueAt",
    "summary",
)
OUTBOX_KEYS = ("sequenceNumber", "messageId", "correlationId", "body")
DOCTOR_KEYS = ("workdir", "files", "writable", "running", "pid", "leftovers", "problems")
FILE_KEYS = ("path", "state", "size", "problems")


def json_help(top: Iterable[str], rows: Iterable[str] = (), *, row_name: str = "") -> str:
    """The ``--json`` flag's help: what the document holds, key by key."""
    text = "print one JSON object on stdout instead (messages go to stderr); keys: "
    text += ", ".join(top)
    if row_name:
        text += f"; each of {row_name}: " + ", ".join(rows)
    return text


def emit(document: Mapping[str, Any], out: TextIO | None = None) -> None:
    """Write ``document`` as JSON and a newline (non-ASCII as is, dates as ISO text)."""
    stream = out or sys.stdout
    stream.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    stream.flush()


# --------------------------------------------------------------------------- status


def status(workdir: Workdir, settings: Settings, *, models: bool = True) -> dict[str, Any]:
    """Per queue and the hub: the broker's counts, and the function that drains it with its
    instances, ceiling, what bound its last scaling decision and its quota cap; with
    ``models``, what the simulator answered (an HTTP call, so not from inside the host)."""
    host = running_host(workdir)
    functions: dict[str, Any] = host.get("functions", {}) if host else {}
    by_source = {
        str(info.get("source") or name.removesuffix("_agent")): (name, info)
        for name, info in functions.items()
    }
    entities: list[dict[str, Any]] = []
    dead = 0
    if workdir.broker.exists():
        with Broker(workdir.broker) as broker:
            for queue, stats in sorted(broker.queue_stats().items()):
                dead += stats.deadlettered
                if queue == settings.queues.deadletter:
                    dead += stats.active + stats.scheduled
                entities.append(
                    {
                        "name": queue,
                        "kind": "queue",
                        "backlog": stats.active,
                        "scheduled": stats.scheduled,
                        "inFlight": stats.locked,
                        "deadLettered": stats.deadlettered,
                        **_scaling(by_source.get(queue)),
                    }
                )
            try:
                hub = broker.hub_stats(settings.eventhub_name, settings.eventhub_consumer_group)
            except Exception:  # the hub exists once something was sent
                hub = {}
            if hub:
                entities.append(
                    {
                        "name": settings.eventhub_name,
                        "kind": "hub",
                        "backlog": sum(p.backlog for p in hub.values()),
                        "scheduled": None,
                        "inFlight": None,
                        "deadLettered": None,
                        **_scaling(by_source.get(settings.eventhub_name)),
                    }
                )
    return {
        "workdir": str(workdir.root),
        "running": host is not None,
        "pid": (host or {}).get("pid"),
        "http": (host or {}).get("http"),
        "entities": entities,
        "deadLetters": dead,
        "models": model_calls(workdir, (host or {}).get("simulator")) if models else [],
    }


def model_calls(workdir: Workdir, simulator: str | None) -> list[dict[str, Any]]:
    """Per deployment, what the running simulator answered: requests, successes, 429s and the
    faults it injected by kind (``--faults``); empty without a simulator that answers."""
    if not simulator:
        return []
    try:
        key = workdir.simulator_admin_key.read_text().strip()
        request = urllib.request.Request(f"{simulator}/_sim/stats", headers={ADMIN_KEY_HEADER: key})
        with urllib.request.urlopen(request, timeout=1.0) as response:
            stats = json.loads(response.read())
    except (OSError, ValueError):
        return []
    deployments = stats.get("deployments") if isinstance(stats, dict) else None
    if not isinstance(deployments, dict):
        return []
    return [
        {
            "deployment": name,
            "requests": int(d.get("requests", 0)),
            "succeeded": int(d.get("succeeded", 0)),
            "throttled": int(d.get("rate_limited", 0)),
            "faultsInjected": int(d.get("faults_injected", 0)),
            "faults": dict(d.get("faults") or {}),
        }
        for name, d in sorted(deployments.items())
        if isinstance(d, dict)
    ]


def _scaling(found: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    name, info = found or (None, {})
    ceilings = [int(info[k]) for k in ("max", "cap", "quotaCap") if info.get(k) is not None]
    profile = info.get("profile") or {}
    return {
        "function": name,
        "instances": int(info["instances"]) if "instances" in info else None,
        "ceiling": min(ceilings) if ceilings else None,
        "boundBy": info.get("bound"),
        "quotaCap": info.get("quotaCap"),
        "secondsPerInvocation": profile.get("secondsPerInvocation"),
        "tokensPerInvocation": profile.get("tokensPerInvocation"),
    }


# --------------------------------------------------------------------------- records


def conversation(record: Conversation) -> dict[str, Any]:
    total = record.total
    return {
        "id": record.id,
        "status": record.status,
        "intent": record.intent_label,
        "customerId": record.customer_id,
        "channel": record.channel,
        "createdAt": record.created_at.isoformat(),
        "seconds": record.seconds_to_outcome(),
        "revisions": record.revisions,
        "calls": total.calls,
        "promptTokens": total.prompt_tokens,
        "completionTokens": total.completion_tokens,
        "costUsd": total.cost_usd,
        "detail": record.summary(),
    }


def rejection(record: Conversation) -> dict[str, Any]:
    outcome = record.outcome
    return {
        "id": record.id,
        "createdAt": record.created_at.isoformat(),
        "source": record.source.describe() if record.source else None,
        "code": record.reason_code,
        "reason": outcome.reason if outcome else None,
        "excerpt": record.body.excerpt if record.body else None,
    }


def batch(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": doc.get("id"),
        "blobName": doc.get("blobName"),
        "status": doc.get("status"),
        "total": int(doc.get("total", 0)),
        "accepted": int(doc.get("accepted", 0)),
        "rejected": int(doc.get("rejected", 0)),
        "rejectedByCode": dict(doc.get("rejectedByCode") or {}),
        "code": doc.get("code"),
        "reason": doc.get("reason"),
    }


def stored(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A record as stored, without the store's own ``_`` fields."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- broker


def dead_letters(broker: Broker, queues: Iterable[str], parking: str) -> list[dict[str, Any]]:
    """Messages the broker dead-lettered on ``queues``, and those the pipeline parked."""
    rows: list[dict[str, Any]] = []
    for queue in queues:
        for dead in broker.deadletters(queue, limit=500):
            rows.append(
                {
                    "queue": f"{queue}/$deadletterqueue",
                    "parked": False,
                    "messageId": dead.message_id,
                    "originalQueue": queue,
                    "reason": dead.reason,
                    "description": dead.description,
                    "deliveries": dead.delivery_count,
                }
            )
        if queue != parking:
            continue
        for message in broker.peek(parking, limit=500):
            props = message.application_properties
            rows.append(
                {
                    "queue": parking,
                    "parked": True,
                    "messageId": str(props.get("OriginalMessageId", message.message_id)),
                    "originalQueue": str(props.get("OriginalQueue", "")) or None,
                    "reason": str(props.get("DeadLetterReason", "")),
                    "description": str(props.get("DeadLetterErrorDescription", "")),
                    "deliveries": message.delivery_count,
                }
            )
    return rows


def work_item(item: WorkItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "conversationId": item.conversation_id,
        "team": item.team,
        "priority": item.priority,
        "status": item.status.value,
        "claimedBy": item.claimed_by,
        "createdAt": item.created_at.isoformat(),
        "dueAt": item.due_at.isoformat(),
        "summary": item.summary,
    }


def outbox_message(message: ReceivedMessage, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sequenceNumber": message.sequence_number,
        "messageId": message.message_id,
        "correlationId": message.correlation_id,
        "body": dict(body),
    }


# --------------------------------------------------------------------------- doctor


def doctor(workdir: Workdir) -> dict[str, Any]:
    """What ``devhost doctor`` checks, as data: each state file (``ok``, ``absent`` or
    ``damaged`` with ``quick_check``'s findings), whether the folder can be written, a running
    host, and processes an earlier host left running; ``problems`` counts what needs a reset.
    A folder that does not exist has no files and no problems (``writable`` is null)."""
    files: list[dict[str, Any]] = []
    problems = 0
    if not workdir.root.is_dir():  # nothing here yet: nothing wrong either
        return dict.fromkeys(DOCTOR_KEYS) | {
            "workdir": str(workdir.root),
            "files": files,
            "running": False,
            "leftovers": [],
            "problems": 0,
        }
    for report in check(workdir):
        state = "absent" if not report.exists else ("damaged" if report.problems else "ok")
        problems += state == "damaged"
        files.append(
            {
                "path": str(report.path),
                "state": state,
                "size": report.size,
                "problems": list(report.problems),
            }
        )
    writable = can_write(workdir.root / STATE_FILES[0])
    problems += not writable
    host = running_host(workdir)
    leftovers = (
        []
        if host is not None
        else [
            {"role": p.role, "pid": p.pid}
            for p in ProcessRecord(workdir.root).read()
            if p.running()
        ]
    )
    return {
        "workdir": str(workdir.root),
        "files": files,
        "writable": writable,
        "running": host is not None,
        "pid": (host or {}).get("pid"),
        "leftovers": leftovers,
        "problems": problems,
    }
