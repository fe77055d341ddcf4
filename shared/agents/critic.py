"""The critic agent: approve, revise or escalate a draft, with the problems found."""

from __future__ import annotations

from shared.agents.structured import AgentRun, ask_structured, load_prompt
from shared.domain.agent_input import AgentInput
from shared.domain.results import CriticResult
from shared.errors import InvalidInput
from shared.ports import ChatModel


async def review_draft(
    inp: AgentInput, *, llm: ChatModel, max_tokens: int = 250
) -> AgentRun[CriticResult]:
    """Review the latest draft; on the last allowed revision only approve or escalate."""
    draft = inp.latest_draft
    if inp.intent is None or draft is None:
        raise InvalidInput("the critic stage needs the intent and a draft")
    final = inp.revision >= inp.max_revisions
    return await ask_structured(
        llm,
        stage="critic",
        system=load_prompt("critic").substitute(),
        user=load_prompt("critic_user").substitute(
            intent_label=inp.intent.label.value,
            needs_human=str(inp.intent.needs_human).lower(),
            revision=inp.revision,
            max_revisions=inp.max_revisions,
            final_note=(
                "This is the final allowed revision: answer approve or escalate, not revise."
                if final
                else ""
            ),
            text=inp.text,
            earlier=inp.earlier_text,
            draft=draft.reply,
        ),
        result_type=CriticResult,
        max_tokens=max_tokens,
        conversation_id=inp.conversation_id,
        customer_id=inp.customer_id,
    )


run = review_draft
