"""Attribute names (OpenTelemetry GenAI and messaging conventions) and value checks."""

from __future__ import annotations

import logging
import math
from typing import Final

from opentelemetry.util.types import AttributeValue

logger = logging.getLogger(__name__)


AttrValue = AttributeValue
"""What a span attribute may hold: str, bool, int, float or a homogeneous sequence of them."""


INSTRUMENTATION_NAME: Final = "switchboard"


# Attribute names. GenAI ones follow the OpenTelemetry GenAI semantic conventions; Azure Monitor
# reads ``gen_ai.system`` to show model calls as GenAI dependencies.
CONVERSATION_ID: Final = "switchboard.conversation_id"


STAGE: Final = "switchboard.stage"


OUTCOME: Final = "switchboard.outcome"


COST_USD: Final = "switchboard.cost_usd"


CACHED: Final = "switchboard.llm.cached"


LLM_ATTEMPT: Final = "switchboard.llm.attempt"


LLM_OUTCOME: Final = "switchboard.llm.outcome"


LLM_LANE: Final = "switchboard.llm.lane"


LLM_ACCOUNTING: Final = "switchboard.llm.accounting"


LLM_ACCOUNTING_WINDOW_S: Final = "switchboard.llm.accounting_window_s"


LLM_ACCOUNTING_OBSERVATIONS: Final = "switchboard.llm.accounting_observations"


LLM_QUOTA_WAIT_S: Final = "switchboard.llm.quota_wait_s"


LLM_RETRY_AFTER_S: Final = "switchboard.llm.retry_after_s"


HTTP_STATUS: Final = "http.response.status_code"


GEN_AI_SYSTEM: Final = "gen_ai.system"


GEN_AI_PROVIDER: Final = "gen_ai.provider.name"


GEN_AI_OPERATION: Final = "gen_ai.operation.name"


GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"


GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"


GEN_AI_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"


GEN_AI_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"


GEN_AI_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"


GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"


ERROR_TYPE: Final = "error.type"


QUEUE: Final = "messaging.destination.name"


FUNCTION: Final = "faas.name"


_PROVIDER_NAMES: Final = {"az.ai.openai": "azure.ai.openai", "openai": "openai"}


_BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def _valid_count(value: int, what: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return True
    logger.warning("dropping %s: %r is not a non-negative integer", what, value)
    return False


def _valid_amount(value: float, what: str) -> bool:
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return True
    logger.warning("dropping %s: %r is not a non-negative finite number", what, value)
    return False
