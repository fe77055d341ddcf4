"""Fakes that stand in for ports whose real adapters need a cloud service.

The publisher fake keeps Service Bus's duplicate detection (same message id → dropped), so
idempotency tests see what the real broker would deliver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ContentFiltered
from shared.ports import ChatRequest, ChatResult, OutboundMessage


@dataclass
class RecordingPublisher:
    sent: list[OutboundMessage] = field(default_factory=list)
    dropped: list[OutboundMessage] = field(default_factory=list)
    closed: bool = False

    async def send(self, message: OutboundMessage) -> None:
        if any(m.queue == message.queue and m.message_id == message.message_id for m in self.sent):
            self.dropped.append(message)
            return
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True

    def on(self, queue: str) -> list[OutboundMessage]:
        return [m for m in self.sent if m.queue == queue]


Answer = str | dict[str, Any] | Exception
Script = Callable[[ChatRequest], Answer]


@dataclass
class ScriptedModel:
    """A chat model that answers from a script: per stage, a list of answers used in order
    (the last one repeats), or a function of the request."""

    answers: dict[str, Sequence[Answer]] = field(default_factory=dict)
    script: Script | None = None
    calls: list[ChatRequest] = field(default_factory=list)
    prompt_tokens: int = 100
    completion_tokens: int = 40

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.calls.append(request)
        if self.script is not None:
            answer = self.script(request)
        else:
            options = self.answers[request.stage]
            index = sum(1 for c in self.calls if c.stage == request.stage) - 1
            answer = options[min(index, len(options) - 1)]
        if isinstance(answer, Exception):
            raise answer
        content = answer if isinstance(answer, str) else json.dumps(answer)
        return ChatResult(
            content=content,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            deployment=f"scripted-{request.stage}",
            cost_usd=0.001,
        )

    async def close(self) -> None:
        return None

    def stages_called(self) -> list[str]:
        return [c.stage for c in self.calls]


INTENT_REFUND = {
    "label": "refund_request",
    "confidence": 0.92,
    "needs_human": False,
    "language": "en",
    "entities": {"order_ids": ["A-1001"], "products": ["kettle"], "amounts": [49.99]},
}
INTENT_ANGRY = {**INTENT_REFUND, "needs_human": True}
REPLY = {"reply": "I'm sorry about the kettle. I've started the refund for order A-1001."}
APPROVE = {"verdict": "approve", "problems": [], "score": 0.9}
REVISE = {
    "verdict": "revise",
    "problems": [{"kind": "tone", "detail": "too curt"}],
    "score": 0.5,
}
ESCALATE_VERDICT = {
    "verdict": "escalate",
    "problems": [{"kind": "policy", "detail": "legal threat"}],
    "score": 0.3,
}
ESCALATION = {
    "priority": "high",
    "team": "billing",
    "reason": "customer wants a person",
    "summary": "Refund for order A-1001 requested; customer is upset.",
}

CONTENT_FILTERED = ContentFiltered("the prompt was filtered (hate: high)")


def happy_model() -> ScriptedModel:
    return ScriptedModel(
        answers={
            "intent": [INTENT_REFUND],
            "response": [REPLY],
            "critic": [APPROVE],
            "escalation": [ESCALATION],
        }
    )
