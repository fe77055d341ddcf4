"""Traces: one per conversation across every hop (W3C traceparent), stage spans and GenAI spans."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.telemetry.attributes import (
    _PROVIDER_NAMES,
    CACHED,
    CONVERSATION_ID,
    COST_USD,
    ERROR_TYPE,
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_PROVIDER,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM,
    HTTP_STATUS,
    LLM_ACCOUNTING,
    LLM_ACCOUNTING_OBSERVATIONS,
    LLM_ACCOUNTING_WINDOW_S,
    LLM_ATTEMPT,
    LLM_LANE,
    LLM_OUTCOME,
    LLM_QUOTA_WAIT_S,
    LLM_RETRY_AFTER_S,
    STAGE,
    AttrValue,
    _valid_amount,
    _valid_count,
)
from shared.telemetry.logs import reset_correlation_id, set_correlation_id
from shared.telemetry.setup import _tracer

logger = logging.getLogger(__name__)


_PROPAGATOR: Final = TraceContextTextMapPropagator()


_IDS: Final = RandomIdGenerator()


def new_traceparent() -> str:
    """A fresh, sampled W3C traceparent: a new trace for a producer that has none."""
    return f"00-{_IDS.generate_trace_id():032x}-{_IDS.generate_span_id():016x}-01"


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id of a W3C traceparent; ``ValueError`` if it is malformed."""
    context = trace.get_current_span(_extract(traceparent)).get_span_context()
    if not context.is_valid:
        raise ValueError(
            f"malformed traceparent ({len(traceparent)} characters): expected "
            "'00-<32 hex trace id>-<16 hex span id>-<2 hex flags>' with non-zero ids"
        )
    return format(context.trace_id, "032x")


def current_traceparent() -> str | None:
    """The traceparent of the active span, to put on the next message; ``None`` without one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _extract(traceparent: str | None) -> Context:
    # An empty starting context means "no parent": a malformed or missing traceparent starts a
    # new trace instead of silently joining whatever span happens to be active.
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({"traceparent": traceparent.strip()}, context=Context())


_HOST_SPAN: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "switchboard_host_span", default=None
)


@contextmanager
def invocation_trace(traceparent: str | None) -> Iterator[None]:
    """The Functions host's trace context of the running invocation (``context.trace_context``
    of a trigger), for the stage spans started inside it (see :func:`stage_span`).

    On Azure the host starts an invocation span for every trigger call; for a Service Bus
    message it continues the trace of the message's ``Diagnostic-Id``/``traceparent`` ("the
    OperationId ... comes directly from the traceparent value in the incoming request or
    message": Use OpenTelemetry with Azure Functions, Troubleshooting). A missing or malformed
    value changes nothing.
    """
    host = trace.get_current_span(_extract(traceparent)).get_span_context()
    token = _HOST_SPAN.set(host if host.is_valid else None)
    try:
        yield
    finally:
        _HOST_SPAN.reset(token)


def _parent_and_links(traceparent: str | None) -> tuple[Context, list[Link]]:
    """Where a stage span hangs: under the host's invocation span when that span belongs to the
    conversation's trace (or the conversation has none), so host and worker spans form one tree;
    otherwise under the conversation's ``traceparent``, linked to the host's span (an Event Hubs
    batch or a blob has a trace of its own, and a conversation keeps one trace)."""
    parent = _extract(traceparent)
    host = _HOST_SPAN.get()
    if host is None:
        return parent, []
    own = trace.get_current_span(parent).get_span_context()
    if not own.is_valid or own.trace_id == host.trace_id:
        return trace.set_span_in_context(NonRecordingSpan(host), Context()), []
    return parent, [Link(host)]


@contextmanager
def stage_span(
    name: str,
    *,
    traceparent: str | None,
    conversation_id: str,
    stage: str,
    attributes: Mapping[str, AttrValue] | None = None,
) -> Iterator[Span]:
    """A consumer span for one stage of one conversation, continuing ``traceparent``'s trace.

    A missing or malformed ``traceparent`` starts a new trace. Inside :func:`invocation_trace`
    the span is the child of the host's invocation span when that continues the same trace, and
    is linked to it otherwise. While the span is open, logs carry ``conversation_id`` as their
    correlation id. An exception is recorded on the span, marks it as an error and propagates.
    """
    parent = _extract(traceparent)
    if traceparent and not trace.get_current_span(parent).get_span_context().is_valid:
        logger.debug(
            "traceparent of %s is malformed (%d characters); starting a new trace",
            conversation_id,
            len(traceparent),
        )
    span_attributes: dict[str, AttrValue] = {
        CONVERSATION_ID: conversation_id,
        STAGE: str(stage),
        "messaging.operation.type": "process",
    }
    if attributes:
        span_attributes.update(attributes)
    parent, links = _parent_and_links(traceparent)
    token = set_correlation_id(conversation_id)
    try:
        with _tracer().start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=span_attributes, links=links
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                raise
    finally:
        reset_correlation_id(token)


class LLMSpan:
    """The open span of one model call; :meth:`record` adds what the response reported."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def record(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float = 0.0,
        cached: bool = False,
        finish_reason: str | None = None,
        *,
        response_model: str | None = None,
    ) -> None:
        """Set token usage, cost, cache and finish reason (GenAI semantic conventions)."""
        attributes: dict[str, AttrValue] = {CACHED: cached}
        if _valid_count(prompt_tokens, "prompt_tokens"):
            attributes[GEN_AI_INPUT_TOKENS] = prompt_tokens
        if _valid_count(completion_tokens, "completion_tokens"):
            attributes[GEN_AI_OUTPUT_TOKENS] = completion_tokens
        if _valid_amount(cost_usd, "cost_usd"):
            attributes[COST_USD] = float(cost_usd)
        if finish_reason:
            attributes[GEN_AI_FINISH_REASONS] = (finish_reason,)
        if response_model:
            attributes[GEN_AI_RESPONSE_MODEL] = response_model
        self.span.set_attributes(attributes)

    def attempt(self, number: int, *, quota_wait_s: float = 0.0, lane: str | None = None) -> None:
        """Which HTTP attempt of one model call this span is, how long it waited for quota
        before it was sent (a retry or a 429 is a new attempt, and a new span), and the quota
        lane it was sent in (``interactive`` or ``batch``)."""
        attributes: dict[str, AttrValue] = {LLM_LANE: lane} if lane else {}
        if _valid_count(number, "attempt"):
            attributes[LLM_ATTEMPT] = number
        if _valid_amount(quota_wait_s, "quota_wait_s"):
            attributes[LLM_QUOTA_WAIT_S] = float(quota_wait_s)
        self.span.set_attributes(attributes)

    def answered(self, outcome: str, *, status: int | None, retry_after_s: float | None) -> None:
        """How the endpoint answered: ``ok``, ``throttled``, ``server_error``, ``timeout``...,
        its HTTP status when one came back, and the retry-after it asked for."""
        attributes: dict[str, AttrValue] = {LLM_OUTCOME: outcome}
        if status is not None:
            attributes[HTTP_STATUS] = status
        if retry_after_s is not None and _valid_amount(retry_after_s, "retry_after_s"):
            attributes[LLM_RETRY_AFTER_S] = float(retry_after_s)
        self.span.set_attributes(attributes)

    def retry(self, reason: str, delay_s: float) -> None:
        """Note a throttled or failed attempt that will be retried after ``delay_s`` seconds."""
        self.span.add_event("gen_ai.retry", {"reason": reason, "delay_s": max(0.0, float(delay_s))})


@contextmanager
def llm_span(
    *,
    deployment: str,
    stage: str,
    operation: str = "chat",
    system: str = "az.ai.openai",
) -> Iterator[LLMSpan]:
    """A GenAI client span for one model call, a child of the active stage span.

    ``system`` is ``az.ai.openai`` for Azure OpenAI and ``openai`` for another OpenAI-compatible
    endpoint (the simulator, Ollama, vLLM).
    """
    attributes: dict[str, AttrValue] = {
        GEN_AI_SYSTEM: system,
        GEN_AI_PROVIDER: _PROVIDER_NAMES.get(system, system),
        GEN_AI_OPERATION: operation,
        GEN_AI_REQUEST_MODEL: deployment,
        STAGE: str(stage),
    }
    with _tracer().start_as_current_span(
        f"{operation} {deployment}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield LLMSpan(span)
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            raise


ACCOUNTING_SPAN: Final = "quota accounting"


def accounting_learned(*, deployment: str, model: str, window_s: float, observations: int) -> None:
    """Record, as a short span under the active one, that the quota limiter learned (or
    changed its mind about) how ``deployment`` charges its quota: ``model`` over ``window_s``
    seconds, after ``observations`` answers."""
    attributes: dict[str, AttrValue] = {
        GEN_AI_REQUEST_MODEL: deployment,
        LLM_ACCOUNTING: model,
        LLM_ACCOUNTING_WINDOW_S: float(window_s),
        LLM_ACCOUNTING_OBSERVATIONS: int(observations),
    }
    with _tracer().start_as_current_span(
        ACCOUNTING_SPAN, kind=SpanKind.INTERNAL, attributes=attributes
    ):
        pass
