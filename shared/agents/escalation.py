"""The escalation agent: priority, team, reason and a summary a person can act on."""

from __future__ import annotations

from shared.agents.structured import AgentRun, ask_structured, load_prompt
from shared.domain.agent_input import AgentInput, render_history
from shared.domain.results import EscalationPriority, EscalationResult, Team
from shared.ports import ChatModel, Usage


async def route_to_human(
    inp: AgentInput, *, llm: ChatModel, max_tokens: int = 300
) -> AgentRun[EscalationResult]:
    """Decide which team takes the case and how urgently, and summarise it for them."""
    history = render_history(inp.drafts)
    return await ask_structured(
        llm,
        stage="escalation",
        system=load_prompt("escalation").substitute(),
        user=load_prompt("escalation_user").substitute(
            escalation_reason=inp.escalation_reason or "the pipeline asked for a person",
            intent_label=inp.intent.label.value if inp.intent else "unknown",
            intent_confidence=f"{inp.intent.confidence:.2f}" if inp.intent else "-",
            channel=inp.channel,
            text=inp.text,
            earlier=inp.earlier_text,
            history=f"Drafts and reviews so far:\n{history}" if history else "",
        ),
        result_type=EscalationResult,
        max_tokens=max_tokens,
        conversation_id=inp.conversation_id,
        customer_id=inp.customer_id,
    )


def fallback_escalation(inp: AgentInput, reason: str) -> AgentRun[EscalationResult]:
    """The escalation record written when the model itself cannot be used (content filter,
    broken output): a person must still get the case, so it goes to customer care, high."""
    return AgentRun(
        result=EscalationResult(
            priority=EscalationPriority.HIGH,
            team=Team.CUSTOMER_CARE,
            reason=reason[:500] or "automatic triage failed",
            summary=(
                "Automatic triage could not summarise this case; read the customer's message "
                f"in conversation {inp.conversation_id} and respond directly."
            ),
        ),
        usage=Usage(),
    )


run = route_to_human
