"""Log context: the conversation's correlation id and the trace ids on every record, redacted."""

from __future__ import annotations

import contextvars
import logging
from typing import Final

from opentelemetry import trace

from shared.telemetry.redaction import RedactingFilter

logger = logging.getLogger(__name__)


LOG_FORMAT: Final = (
    "%(asctime)s %(levelname)s %(name)s [cid=%(correlation_id)s trace=%(trace_id)s] %(message)s"
)
"""A ``logging.Formatter`` format that shows the correlation fields the log filter adds."""


_CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "switchboard_correlation_id", default=None
)


def correlation_id() -> str | None:
    """The conversation id of the work in progress, for logs; ``None`` outside a stage."""
    return _CORRELATION_ID.get()


def set_correlation_id(cid: str | None) -> contextvars.Token[str | None]:
    """Set the correlation id of the current context; ``reset_correlation_id`` undoes it."""
    return _CORRELATION_ID.set(cid)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    """Restore the correlation id that was current before ``set_correlation_id``."""
    _CORRELATION_ID.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``trace_id`` and ``span_id`` to records (``-`` when unknown).

    Values passed explicitly through ``extra=`` win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _CORRELATION_ID.get() or "-"
        if not hasattr(record, "trace_id"):
            context = trace.get_current_span().get_span_context()
            record.trace_id = format(context.trace_id, "032x") if context.is_valid else "-"
            record.span_id = format(context.span_id, "016x") if context.is_valid else "-"
        return True


def install_log_filters(handler: logging.Handler) -> None:
    """Give ``handler`` the correlation fields and redaction; safe to call more than once.

    :func:`configure_telemetry` does this for the root logger's handlers; call it for a handler
    added later (a devhost console handler, say).
    """
    if not any(isinstance(f, CorrelationFilter) for f in handler.filters):
        handler.addFilter(CorrelationFilter())
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


def _install_root_log_filters() -> None:
    for handler in logging.getLogger().handlers:
        install_log_filters(handler)
    # The handler of last resort prints records no handler took; it must not print PII either.
    if logging.lastResort is not None:
        install_log_filters(logging.lastResort)
