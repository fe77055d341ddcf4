"""The four agents. Each is ``async def run(inp, *, llm) -> AgentRun[Result]``: it builds its
prompt, asks the model for a typed result, and knows nothing of queues or databases."""

from shared.agents.structured import AgentRun, Usage
from shared.domain.results import (
    CriticResult,
    EscalationResult,
    IntentResult,
    ResponseResult,
)

__all__ = [
    "AgentRun",
    "CriticResult",
    "EscalationResult",
    "IntentResult",
    "ResponseResult",
    "Usage",
]
