"""One exception hierarchy for the whole pipeline.

The split that matters is between *transient* failures (retry, or reschedule the message) and
*permanent* ones (dead-letter with a reason, or escalate). Anything else is a bug: it propagates,
the platform abandons the message and, after MaxDeliveryCount, dead-letters it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.ports import Usage


class SwitchboardError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(SwitchboardError):
    """A setting is missing or malformed; start-up must stop."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class TransientError(SwitchboardError):
    """Worth trying again: throttling, 5xx, timeouts, lost locks, a concurrent write."""


class RetryLater(TransientError):
    """Re-send the current message after ``delay_s`` seconds instead of waiting under its lock."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(f"retry in {delay_s:.1f}s: {reason}")
        self.delay_s = delay_s
        self.reason = reason


class PermanentError(SwitchboardError):
    """Retrying cannot help; the message is dead-lettered with ``reason``."""

    reason_code = "PermanentError"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidInput(PermanentError):
    """A request, event, document or message failed validation."""

    reason_code = "InvalidInput"


class OversizeMessage(PermanentError):
    """A message is larger than the transport accepts."""

    reason_code = "OversizeMessage"


class ModelRefusal(PermanentError):
    """The model's answer cannot be used; ``usage`` is what the stage's calls cost all the same
    (set by the agent that made them; None when no call was answered)."""

    usage: Usage | None = None


class SchemaViolation(ModelRefusal):
    """The model's output broke the result schema even after one repair."""

    reason_code = "SchemaViolation"


class ContentFiltered(ModelRefusal):
    """The model provider's content filter refused the prompt or the completion. Never retried."""

    reason_code = "ContentFiltered"


class ModelRequestRejected(PermanentError):
    """The model endpoint refused the request itself (HTTP 400: an invalid schema or parameter).

    The request is our bug, not the deployment's trouble: it is not retried, not sent to a
    fallback deployment, and does not count against any circuit breaker.
    """

    reason_code = "ModelBadRequest"


class AgentCrashed(PermanentError):
    """An agent raised an error nobody classified: a bug on this input, not worth a retry."""

    reason_code = "AgentCrashed"


class BudgetExceeded(PermanentError):
    """A token budget or the total retry budget is spent."""

    reason_code = "BudgetExceeded"


class CircuitOpen(TransientError):
    """Every deployment that could serve the call has an open circuit."""

    def __init__(self, deployment: str, retry_in_s: float) -> None:
        super().__init__(f"circuit open for {deployment}; retry in {retry_in_s:.1f}s")
        self.deployment = deployment
        self.retry_in_s = retry_in_s


class Conflict(SwitchboardError):
    """A create found the item already there."""


class PreconditionFailed(SwitchboardError):
    """A conditional write found a newer version (HTTP 412)."""


class NotFound(SwitchboardError):
    """The item does not exist."""
