"""Each agent with a scripted model: prompts, typed results, one repair, permanent errors."""

from __future__ import annotations

import json

import pytest

from shared.agents import critic, escalation, intent, response
from shared.agents.structured import wire_schema
from shared.domain.agent_input import AgentInput, Draft
from shared.domain.results import CriticResult, IntentLabel, IntentResult, Verdict
from shared.errors import ContentFiltered, SchemaViolation
from shared.llm.strict_schema import strict_schema_violations
from shared.ports import ChatResult, Usage
from tests.support.fakes import (
    APPROVE,
    CONTENT_FILTERED,
    ESCALATION,
    INTENT_REFUND,
    REPLY,
    REVISE,
    ScriptedModel,
)

TEXT = "I want my money back for the kettle, order A-1001. It arrived broken."


def _input(**extra: object) -> AgentInput:
    base: dict[str, object] = {
        "conversation_id": "c-1",
        "customer_id": "cust-1",
        "channel": "email",
        "text": TEXT,
    }
    base.update(extra)
    return AgentInput(**base)  # type: ignore[arg-type]


async def test_intent_agent_returns_the_typed_result_and_sends_the_schema() -> None:
    model = ScriptedModel(answers={"intent": [INTENT_REFUND]})
    run = await intent.classify_intent(_input(), llm=model, max_tokens=123)
    assert run.result.label is IntentLabel.REFUND_REQUEST
    assert run.result.entities.order_ids == ["A-1001"]
    request = model.calls[0]
    assert request.json_schema == wire_schema(IntentResult)
    assert strict_schema_violations(request.json_schema) == []
    assert request.max_tokens == 123
    assert request.temperature == 0.0
    assert TEXT in request.messages[1]["content"]
    assert "taxonomy" in request.messages[0]["content"]
    assert run.usage.calls == 1
    assert run.usage.prompt_tokens == 100


async def test_response_agent_grounds_the_reply_in_intent_and_earlier_reviews() -> None:
    model = ScriptedModel(answers={"response": [REPLY]})
    intent_result = IntentResult.model_validate(INTENT_REFUND)
    review = CriticResult.model_validate(REVISE)
    inp = _input(intent=intent_result, revision=1, drafts=(Draft(0, "No.", review),))
    run = await response.draft_reply(inp, llm=model)
    assert run.result.reply == REPLY["reply"]
    prompt = model.calls[0].messages[1]["content"]
    assert "refund_request" in prompt
    assert "A-1001" in prompt
    assert "too curt" in prompt  # the reviewer's finding reaches the rewrite


async def test_critic_is_told_when_the_revision_is_the_last_allowed() -> None:
    model = ScriptedModel(answers={"critic": [APPROVE]})
    intent_result = IntentResult.model_validate(INTENT_REFUND)
    drafts = (Draft(0, "draft 0"), Draft(1, "draft 1"), Draft(2, "draft 2"))
    await critic.review_draft(
        _input(intent=intent_result, revision=2, max_revisions=2, drafts=drafts), llm=model
    )
    await critic.review_draft(
        _input(intent=intent_result, revision=0, max_revisions=2, drafts=drafts[:1]), llm=model
    )
    final_prompt, first_prompt = (c.messages[1]["content"] for c in model.calls)
    assert "final allowed revision" in final_prompt
    assert "final allowed revision" not in first_prompt
    assert "draft 2" in final_prompt


async def test_escalation_agent_summarises_for_a_person() -> None:
    model = ScriptedModel(answers={"escalation": [ESCALATION]})
    run = await escalation.route_to_human(_input(escalation_reason="legal threat"), llm=model)
    assert run.result.team.value == "billing"
    assert "legal threat" in model.calls[0].messages[1]["content"]


async def test_invalid_json_is_repaired_once() -> None:
    model = ScriptedModel(answers={"critic": ["not json {", APPROVE]})
    intent_result = IntentResult.model_validate(INTENT_REFUND)
    run = await critic.review_draft(
        _input(intent=intent_result, drafts=(Draft(0, "d"),)), llm=model
    )
    assert run.result.verdict is Verdict.APPROVE
    assert run.usage.calls == 2
    repair = model.calls[1].messages
    assert repair[-2] == {"role": "assistant", "content": "not json {"}
    assert "not valid JSON" in repair[-1]["content"]


async def test_output_that_breaks_the_schema_twice_is_a_permanent_error() -> None:
    broken = {**INTENT_REFUND, "label": "make_coffee"}
    model = ScriptedModel(answers={"intent": [broken, json.dumps({"label": "x"})]})
    with pytest.raises(SchemaViolation, match="after one repair") as caught:
        await intent.classify_intent(_input(), llm=model)
    assert len(model.calls) == 2
    assert "label" in caught.value.description
    spent = caught.value.usage  # both calls were paid for
    assert spent is not None
    assert (spent.calls, spent.prompt_tokens, spent.completion_tokens) == (2, 200, 80)


async def test_a_filtered_repair_still_carries_the_first_call_s_usage() -> None:
    model = ScriptedModel(answers={"intent": ["not json {", CONTENT_FILTERED]})
    with pytest.raises(ContentFiltered) as caught:
        await intent.classify_intent(_input(), llm=model)
    assert caught.value.usage is not None
    assert caught.value.usage.calls == 1


def test_usage_keeps_what_each_deployment_served() -> None:
    usage = Usage()
    for deployment, prompt in (("primary", 100), ("fallback", 30), ("primary", 10)):
        usage.add(ChatResult("{}", prompt, 5, deployment=deployment, cost_usd=0.5))
    assert usage.by_deployment == {"primary": (110, 10, 1.0), "fallback": (30, 5, 0.5)}
    assert (usage.prompt_tokens, usage.calls) == (140, 3)


async def test_content_filter_is_never_retried() -> None:
    model = ScriptedModel(answers={"intent": [CONTENT_FILTERED, INTENT_REFUND]})
    with pytest.raises(ContentFiltered):
        await intent.classify_intent(_input(), llm=model)
    assert len(model.calls) == 1


def test_fallback_escalation_goes_to_a_person_without_the_model() -> None:
    run = escalation.fallback_escalation(_input(), "content filter")
    assert run.result.priority.value == "high"
    assert run.usage.calls == 0
    assert "c-1" in run.result.summary


def test_every_result_schema_is_strict() -> None:
    from shared.domain.results import EscalationResult, ResponseResult

    for model in (IntentResult, ResponseResult, CriticResult, EscalationResult):
        schema = model.model_json_schema()
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"])
