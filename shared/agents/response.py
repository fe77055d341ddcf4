"""The response agent: a reply grounded in the conversation and the intent."""

from __future__ import annotations

from shared.agents.structured import AgentRun, ask_structured, load_prompt
from shared.domain.agent_input import AgentInput, render_history
from shared.domain.results import ResponseResult
from shared.errors import InvalidInput
from shared.ports import ChatModel


async def draft_reply(
    inp: AgentInput, *, llm: ChatModel, max_tokens: int = 400
) -> AgentRun[ResponseResult]:
    """Write (or rewrite, after a review) the reply to the customer."""
    if inp.intent is None:
        raise InvalidInput("the response stage needs the intent result")
    entities = inp.intent.entities
    history = render_history(inp.drafts)
    return await ask_structured(
        llm,
        stage="response",
        system=load_prompt("response").substitute(),
        user=load_prompt("response_user").substitute(
            channel=inp.channel,
            intent_label=inp.intent.label.value,
            intent_confidence=f"{inp.intent.confidence:.2f}",
            language=inp.intent.language,
            entities=(
                f"orders {entities.order_ids or '-'}, products {entities.products or '-'}, "
                f"amounts {entities.amounts or '-'}"
            ),
            text=inp.text,
            earlier=inp.earlier_text,
            history=f"Earlier drafts and reviews:\n{history}" if history else "",
        ),
        result_type=ResponseResult,
        max_tokens=max_tokens,
        conversation_id=inp.conversation_id,
        customer_id=inp.customer_id,
    )


run = draft_reply
