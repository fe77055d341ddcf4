"""The four agents. Each is ``async def run(inp, *, llm) -> AgentRun[Result]``: it builds its
prompt, asks the model for a typed result, and knows nothing of queues or databases."""

from shared.agents.structured import AgentRun
from shared.domain.results import (
    CriticResult,
    EscalationResult,
    IntentResult,
    ResponseResult,
)
from shared.ports import Usage

__all__ = [
    "AgentRun",
    "CriticResult",
    "EscalationResult",
    "IntentResult",
    "ResponseResult",
    "Usage",
]
