"""The intent agent: label, confidence, needs-human flag, language and entities."""

from __future__ import annotations

from shared.agents.structured import AgentRun, ask_structured, load_prompt
from shared.domain.agent_input import AgentInput
from shared.domain.results import IntentResult
from shared.ports import ChatModel


async def classify_intent(
    inp: AgentInput, *, llm: ChatModel, max_tokens: int = 200
) -> AgentRun[IntentResult]:
    """Classify the customer's message against the fixed customer-service taxonomy."""
    return await ask_structured(
        llm,
        stage="intent",
        system=load_prompt("intent").substitute(),
        user=load_prompt("intent_user").substitute(
            channel=inp.channel, text=inp.text, earlier=inp.earlier_text
        ),
        result_type=IntentResult,
        max_tokens=max_tokens,
        conversation_id=inp.conversation_id,
        customer_id=inp.customer_id,
    )


run = classify_intent
