"""Typed agent results. Each model also supplies the JSON schema for structured output.

Every field is required and no extra keys are allowed, which is what strict structured
outputs demand; "nothing found" is an empty list, never a missing key.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Result(BaseModel):
    """A result type: strict (no extra fields), so its schema is what structured output sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IntentLabel(StrEnum):
    ORDER_STATUS = "order_status"
    REFUND_REQUEST = "refund_request"
    RETURN_EXCHANGE = "return_exchange"
    BILLING_ISSUE = "billing_issue"
    CANCELLATION = "cancellation"
    TECHNICAL_SUPPORT = "technical_support"
    ACCOUNT_ACCESS = "account_access"
    SHIPPING_DELAY = "shipping_delay"
    PRODUCT_QUESTION = "product_question"
    COMPLAINT = "complaint"
    FRAUD_REPORT = "fraud_report"
    FEEDBACK = "feedback"
    OTHER = "other"


class Entities(_Result):
    order_ids: list[str] = Field(max_length=20)
    products: list[str] = Field(max_length=20)
    amounts: list[float] = Field(max_length=20)


class IntentResult(_Result):
    label: IntentLabel
    confidence: float = Field(ge=0.0, le=1.0)
    needs_human: bool
    language: str = Field(min_length=2, max_length=8)
    entities: Entities


class ResponseResult(_Result):
    reply: str = Field(min_length=1, max_length=4000)


class Verdict(StrEnum):
    APPROVE = "approve"
    REVISE = "revise"
    ESCALATE = "escalate"


class ProblemKind(StrEnum):
    POLICY = "policy"
    PII_EXPOSURE = "pii_exposure"
    TONE = "tone"
    UNSUPPORTED_CLAIM = "unsupported_claim"


class Problem(_Result):
    kind: ProblemKind
    detail: str = Field(max_length=500)


class CriticResult(_Result):
    verdict: Verdict
    problems: list[Problem] = Field(max_length=20)
    score: float = Field(ge=0.0, le=1.0)


class EscalationPriority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Team(StrEnum):
    BILLING = "billing"
    LOGISTICS = "logistics"
    TECHNICAL = "technical"
    ACCOUNT_SECURITY = "account_security"
    CUSTOMER_CARE = "customer_care"
    LEGAL = "legal"


class EscalationResult(_Result):
    priority: EscalationPriority
    team: Team
    reason: str = Field(min_length=1, max_length=500)
    summary: str = Field(min_length=1, max_length=2000)
