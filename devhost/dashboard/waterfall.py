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

GEN_AI_SYSTEM = "gen_ai.system"
RETRY_EVENT = "gen_ai.retry"
SHOWN_ATTRIBUTES = (
    ("delivery_count", "delivery"),
    ("messaging.message.id", "message"),
    ("gen_ai.request.model", "deployment"),
    ("gen_ai.response.model", "model"),
    ("gen_ai.usage.input_tokens", "prompt tokens"),
    ("gen_ai.usage.output_tokens", "completion tokens"),
    ("switchboard.cost_usd", "cost $"),
    ("switchboard.llm.cached", "cached"),
    ("gen_ai.response.finish_reasons", "finish"),
    ("error.type", "error"),
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


def from_spans(spans: list[CollectedSpan]) -> Waterfall:
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    total = max(1e-3, (t1 - t0) / 1e9)
    by_id = {s.span_id: s for s in spans}

    def depth(span: CollectedSpan) -> int:
        level, seen = 0, set()
        while span.parent_id in by_id and span.parent_id not in seen:
            seen.add(span.parent_id)
            span = by_id[span.parent_id]
            level += 1
        return min(level, 6)

    bars: list[Bar] = []
    attempts: dict[str, int] = {}
    ordered = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    hops = [_hop(span) for span in ordered]
    later = {(h.base, h.attempt) for h in hops if h is not None}
    for span, hop in zip(ordered, hops, strict=True):
        offset = (span.start_ns - t0) / 1e9
        left, width = _place(offset, span.duration_s, total)
        is_llm = GEN_AI_SYSTEM in span.attributes
        stage = span.stage or ""
        label = span.name
        notes = []
        if hop is not None:
            attempts[hop.base] = attempts.get(hop.base, 0) + 1
            if hop.revision:
                label += f" (rev {hop.revision})"
            if hop.attempt:
                notes.append(f"re-sent, attempt {hop.attempt + 1}")
            if (hop.base, hop.attempt + 1) in later:
                notes.append("rescheduled")
            delivery = span.attributes.get("delivery_count")
            if isinstance(delivery, int) and delivery > 1:
                notes.append(f"delivery {delivery}")
        note = ", ".join(notes)
        details = [
            (label, _text(span.attributes[name]))
            for name, label in SHOWN_ATTRIBUTES
            if name in span.attributes
        ]
        if span.status_message:
            details.append(("status", _cut(span.status_message)))
        events = [
            _event(e.name, e.attributes, (e.time_ns - span.start_ns) / 1e9) for e in span.events
        ]
        bars.append(
            Bar(
                label=label,
                kind="llm" if is_llm else ("stage" if span.conversation_id else "span"),
                stage=stage,
                offset_s=offset,
                duration_s=span.duration_s,
                left=left,
                width=width,
                depth=depth(span),
                failed=span.failed or "error.type" in span.attributes,
                note=note,
                details=details,
                events=events,
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
