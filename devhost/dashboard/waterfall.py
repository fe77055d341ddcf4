"""A conversation's trace as a waterfall: one bar per span, placed on the trace's time line.

The spans are those the app exported (stage spans across queue hops, model-call spans under
them). Without collected spans (an exporter of the user's choice, spans not yet exported) the
bars come from the conversation's stage records instead, and say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from devhost.dashboard.spans import CollectedSpan
from shared.domain.conversation import Conversation
from shared.telemetry.attributes import (
    CACHED,
    COST_USD,
    ERROR_TYPE,
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM,
    HTTP_STATUS,
    LLM_ATTEMPT,
    LLM_OUTCOME,
    LLM_QUOTA_WAIT_S,
    LLM_RETRY_AFTER_S,
)

RETRY_EVENT = "gen_ai.retry"
SHOWN_ATTRIBUTES = (
    ("delivery_count", "delivery"),
    ("messaging.message.id", "message"),
    (GEN_AI_REQUEST_MODEL, "deployment"),
    (GEN_AI_RESPONSE_MODEL, "model"),
    (LLM_ATTEMPT, "attempt"),
    (HTTP_STATUS, "HTTP"),
    (LLM_OUTCOME, "outcome"),
    (LLM_QUOTA_WAIT_S, "quota wait s"),
    (LLM_RETRY_AFTER_S, "retry-after s"),
    (GEN_AI_INPUT_TOKENS, "prompt tokens"),
    (GEN_AI_OUTPUT_TOKENS, "completion tokens"),
    (COST_USD, "cost $"),
    (CACHED, "cached"),
    (GEN_AI_FINISH_REASONS, "finish"),
    (ERROR_TYPE, "error"),
)


@dataclass
class Bar:
    label: str
    kind: str  # stage | llm | record | span
    stage: str
    offset_s: float
    duration_s: float
    left: float  # percent of the time line
    width: float
    depth: int = 0
    failed: bool = False
    note: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@dataclass
class Waterfall:
    bars: list[Bar]
    total_s: float
    source: str  # spans | records | none
    attempts: dict[str, int]

    @property
    def reschedules(self) -> int:
        """Stage messages handled more than once: re-sent later, or delivered again."""
        return sum(max(0, n - 1) for n in self.attempts.values())


_MESSAGE_ID = re.compile(r"^(?P<base>.+:(?P<stage>[a-z_]+):(?P<rev>\d+))(?::a(?P<attempt>\d+))?$")


@dataclass(frozen=True)
class _Hop:
    base: str  # conversation:stage:revision
    revision: int
    attempt: int  # 0 for the first send, n for the n-th re-send


def _hop(span: CollectedSpan) -> _Hop | None:
    """Which stage message a stage span handled, from its message id
    (``{conversation}:{stage}:{revision}``, ``:a{n}`` added for the n-th re-send)."""
    found = _MESSAGE_ID.match(str(span.attributes.get("messaging.message.id", "")))
    if found is None:
        return None
    return _Hop(found["base"], int(found["rev"]), int(found["attempt"] or 0))


def _place(offset: float, duration: float, total: float) -> tuple[float, float]:
    left = 100.0 * offset / total if total > 0 else 0.0
    width = max(0.4, 100.0 * duration / total) if total > 0 else 100.0
    return round(min(left, 99.6), 3), round(min(width, 100.0 - min(left, 99.6)), 3)


def _tree_order(spans: list[CollectedSpan]) -> list[tuple[CollectedSpan, int]]:
    """Spans in display order with their depth: each span followed by its children, oldest
    first. A stage span under the previous stage's span (a queue hop) stays on its parent's
    level, so the stages read as a sequence and each model call sits one level under its stage.
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[CollectedSpan]] = {}
    for span in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        parent = span.parent_id if span.parent_id in by_id else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[CollectedSpan, int]] = []
    stack = [(span, 0) for span in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        span, level = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        ordered.append((span, min(level, 6)))
        for child in reversed(children.get(span.span_id, [])):
            hop = _is_stage(child) and _is_stage(span)
            stack.append((child, level if hop else level + 1))
    return ordered


def _is_stage(span: CollectedSpan) -> bool:
    return span.conversation_id is not None and GEN_AI_SYSTEM not in span.attributes


def _hop_notes(span: CollectedSpan, hop: _Hop | None, later: set[tuple[str, int]]) -> list[str]:
    if hop is None:
        return []
    notes = []
    if hop.attempt:
        notes.append(f"re-sent, attempt {hop.attempt + 1}")
    if (hop.base, hop.attempt + 1) in later:
        notes.append("rescheduled")
    delivery = span.attributes.get("delivery_count")
    if isinstance(delivery, int) and delivery > 1:
        notes.append(f"delivery {delivery}")
    return notes


def _call_notes(span: CollectedSpan) -> list[str]:
    """What a model-call bar says beside its name: a retry, a refusal, a wait for quota."""
    notes = []
    attempt = span.attributes.get(LLM_ATTEMPT)
    if isinstance(attempt, int) and attempt > 1:
        notes.append(f"attempt {attempt}")
    status = span.attributes.get(HTTP_STATUS)
    if isinstance(status, int) and status != 200:
        notes.append(f"HTTP {status}")
    elif span.attributes.get(LLM_OUTCOME) not in (None, "ok"):
        notes.append(str(span.attributes[LLM_OUTCOME]))
    waited = span.attributes.get(LLM_QUOTA_WAIT_S)
    if isinstance(waited, int | float) and waited >= 0.05:
        notes.append(f"waited {waited:.2f}s for quota")
    return notes


def _calls_summary(calls: list[CollectedSpan]) -> str:
    """A stage bar's note on the model calls under it: count, retries, tokens, cost."""
    if not calls:
        return ""
    tokens = sum(
        int(c.attributes.get(name, 0) or 0)
        for c in calls
        for name in (GEN_AI_INPUT_TOKENS, GEN_AI_OUTPUT_TOKENS)
    )
    cost = sum(float(c.attributes.get(COST_USD, 0.0) or 0.0) for c in calls)
    failed = sum(1 for c in calls if c.attributes.get(LLM_OUTCOME) not in (None, "ok"))
    text = f"{len(calls)} model call{'s' if len(calls) != 1 else ''}"
    if failed:
        text += f" ({failed} retried)"
    return f"{text}, {tokens:,} tokens, ${cost:.4f}"


def from_spans(spans: list[CollectedSpan]) -> Waterfall:
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    total = max(1e-3, (t1 - t0) / 1e9)
    calls_of: dict[str, list[CollectedSpan]] = {}
    for span in spans:
        if GEN_AI_SYSTEM in span.attributes and span.parent_id:
            calls_of.setdefault(span.parent_id, []).append(span)
    bars: list[Bar] = []
    attempts: dict[str, int] = {}
    ordered = _tree_order(spans)
    hops = [_hop(span) for span, _ in ordered]
    later = {(h.base, h.attempt) for h in hops if h is not None}
    for (span, level), hop in zip(ordered, hops, strict=True):
        offset = (span.start_ns - t0) / 1e9
        left, width = _place(offset, span.duration_s, total)
        is_llm = GEN_AI_SYSTEM in span.attributes
        label = span.name
        if hop is not None:
            attempts[hop.base] = attempts.get(hop.base, 0) + 1
            if hop.revision:
                label += f" (rev {hop.revision})"
        notes = _call_notes(span) if is_llm else _hop_notes(span, hop, later)
        summary = _calls_summary(calls_of.get(span.span_id, []))
        details = [
            (label, _text(span.attributes[name]))
            for name, label in SHOWN_ATTRIBUTES
            if name in span.attributes
        ]
        if summary:
            details.insert(0, ("model calls", summary))
        if span.status_message:
            details.append(("status", _cut(span.status_message)))
        bars.append(
            Bar(
                label=label,
                kind="llm" if is_llm else ("stage" if span.conversation_id else "span"),
                stage=span.stage or "",
                offset_s=offset,
                duration_s=span.duration_s,
                left=left,
                width=width,
                depth=level,
                failed=span.failed or "error.type" in span.attributes,
                note=", ".join(notes),
                details=details,
                events=[
                    _event(e.name, e.attributes, (e.time_ns - span.start_ns) / 1e9)
                    for e in span.events
                ],
            )
        )
    return Waterfall(bars, total, "spans", attempts)


def from_records(conversation: Conversation) -> Waterfall:
    records = conversation.records_in_order()
    if not records:
        return Waterfall([], 0.0, "none", {})
    t0: datetime = min([conversation.created_at, *(r.started_at for r in records)])
    end = max(r.completed_at for r in records)
    total = max(1e-3, (end - t0).total_seconds())
    bars = []
    for record in records:
        offset = (record.started_at - t0).total_seconds()
        duration = (record.completed_at - record.started_at).total_seconds()
        left, width = _place(offset, duration, total)
        usage = record.usage
        bars.append(
            Bar(
                label=f"{record.stage.value} agent"
                + (f" (rev {record.revision})" if record.revision else ""),
                kind="record",
                stage=record.stage.value,
                offset_s=offset,
                duration_s=duration,
                left=left,
                width=width,
                failed=record.error is not None,
                details=[
                    ("calls", str(usage.calls)),
                    ("tokens", str(usage.prompt_tokens + usage.completion_tokens)),
                    ("cost $", f"{usage.cost_usd:.6f}"),
                ],
            )
        )
    return Waterfall(bars, total, "records", {})


def build(conversation: Conversation, spans: list[CollectedSpan]) -> Waterfall:
    return from_spans(spans) if spans else from_records(conversation)


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _event(name: str, attributes: dict[str, object], at_s: float) -> str:
    if name == RETRY_EVENT:
        delay = attributes.get("delay_s")
        reason = attributes.get("reason", "")
        delay_text = f"{float(delay):.2f}s" if isinstance(delay, int | float) else "?"
        return f"+{at_s:.2f}s retry ({reason}) after {delay_text}"
    if name == "exception":  # the message, not the stack trace
        kind = attributes.get("exception.type", "")
        message = _text(attributes.get("exception.message", ""))
        return f"+{at_s:.2f}s exception {kind}: {_cut(message)}"
    shown = ", ".join(f"{k}={_cut(_text(v), 80)}" for k, v in attributes.items())
    return f"+{at_s:.2f}s {name}" + (f" ({shown})" if shown else "")


def _cut(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
