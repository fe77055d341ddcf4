"""The routing table: every edge of the flow, and the bounded revise loop."""

from __future__ import annotations

import pytest

from shared.domain.messages import Stage
from shared.domain.results import CriticResult, EscalationResult, IntentResult, ResponseResult
from shared.domain.routing import Finish, Next, Outcome, after_model_refusal, next_step
from tests.support.fakes import (
    APPROVE,
    ESCALATE_VERDICT,
    ESCALATION,
    INTENT_ANGRY,
    INTENT_REFUND,
    REPLY,
    REVISE,
)

intent_ok = IntentResult.model_validate(INTENT_REFUND)


def test_a_clear_intent_goes_to_the_response_agent() -> None:
    assert next_step(Stage.INTENT, intent_ok, revision=0, max_revisions=2) == Next(
        Stage.RESPONSE, 0
    )


@pytest.mark.parametrize(
    "change",
    [{"needs_human": True}, {"label": "fraud_report"}, {"confidence": 0.2}],
    ids=["needs-human", "fraud", "low-confidence"],
)
def test_an_intent_that_needs_a_person_goes_to_escalation(change: dict[str, object]) -> None:
    result = IntentResult.model_validate({**INTENT_REFUND, **change})
    step = next_step(Stage.INTENT, result, revision=0, max_revisions=2)
    assert isinstance(step, Next)
    assert step.stage is Stage.ESCALATION
    assert step.reason


def test_a_draft_goes_to_the_critic_at_the_same_revision() -> None:
    draft = ResponseResult.model_validate(REPLY)
    assert next_step(Stage.RESPONSE, draft, revision=1, max_revisions=2) == Next(Stage.CRITIC, 1)


def test_approval_answers_the_conversation() -> None:
    review = CriticResult.model_validate(APPROVE)
    assert next_step(Stage.CRITIC, review, revision=0, max_revisions=2) == Finish(Outcome.ANSWERED)


def test_revise_loops_back_until_the_bound_then_escalates() -> None:
    review = CriticResult.model_validate(REVISE)
    assert next_step(Stage.CRITIC, review, revision=0, max_revisions=2) == Next(Stage.RESPONSE, 1)
    assert next_step(Stage.CRITIC, review, revision=1, max_revisions=2) == Next(Stage.RESPONSE, 2)
    final = next_step(Stage.CRITIC, review, revision=2, max_revisions=2)
    assert isinstance(final, Next)
    assert final.stage is Stage.ESCALATION


def test_zero_revisions_allowed_escalates_the_first_revise() -> None:
    review = CriticResult.model_validate(REVISE)
    step = next_step(Stage.CRITIC, review, revision=0, max_revisions=0)
    assert isinstance(step, Next)
    assert step.stage is Stage.ESCALATION


def test_a_critic_escalation_and_the_escalation_agent_end_escalated() -> None:
    review = CriticResult.model_validate(ESCALATE_VERDICT)
    step = next_step(Stage.CRITIC, review, revision=1, max_revisions=2)
    assert isinstance(step, Next)
    assert (step.stage, step.revision) == (Stage.ESCALATION, 1)
    done = EscalationResult.model_validate(ESCALATION)
    assert next_step(Stage.ESCALATION, done, revision=1, max_revisions=2) == Finish(
        Outcome.ESCALATED
    )


def test_a_model_refusal_sends_the_case_to_a_person() -> None:
    step = after_model_refusal(Stage.RESPONSE, 1, "content filter")
    assert step == Next(Stage.ESCALATION, 1, "content filter")
    assert after_model_refusal(Stage.ESCALATION, 0, "x") == Finish(Outcome.ESCALATED, "x")


def test_a_result_of_the_wrong_type_has_no_route() -> None:
    with pytest.raises(TypeError):
        next_step(
            Stage.CRITIC, IntentResult.model_validate(INTENT_ANGRY), revision=0, max_revisions=2
        )
