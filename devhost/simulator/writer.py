"""Prose the simulator writes: replies, summaries, reasons, short labels.

Every function takes a *level* of brevity (0 = natural length .. 3 = a few words) so that the
generator can make an answer fit ``max_tokens`` by writing less instead of cutting JSON short.
Choices between phrasings come from the request's seeded ``random.Random``, so the same request
always reads the same.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from devhost.simulator import vocabulary as vocab
from devhost.simulator.analysis import TextAnalysis

MAX_LEVEL = 3

_INTENT_SUMMARIES: dict[str, str] = {
    "order_status": "asks about the status of an order",
    "refund_request": "requests a refund",
    "return_exchange": "wants to return or exchange an item",
    "billing_issue": "reports a billing problem",
    "cancellation": "wants to cancel",
    "technical_support": "reports a technical problem",
    "account_access": "cannot access their account",
    "shipping_delay": "reports a late delivery",
    "product_question": "asks a question about a product",
    "complaint": "complains about the service",
    "fraud_report": "reports unauthorized activity",
    "feedback": "shares feedback",
    "other": "sent a general enquiry",
}
_GREETINGS = ("Hello,", "Hi there,", "Dear customer,")
_CLOSINGS = (
    "Please reply to this message if there is anything else we can do.",
    "If you have any other questions, just reply and we will be glad to help.",
    "Thank you for your patience while we sort this out.",
)
_EMPATHY = (
    "I am sorry for the frustration this has caused.",
    "I understand how frustrating this is, and I apologise.",
)
_PROBLEM_DETAILS: dict[str, str] = {
    "pii_exposure": "The draft repeats personal data; remove it before sending.",
    "tone": "The tone should be warmer and acknowledge the customer's frustration.",
    "unsupported_claim": "The draft promises an outcome we cannot guarantee.",
    "policy": "The draft should follow the refund and returns policy wording.",
}

PROBLEM_KINDS = frozenset(_PROBLEM_DETAILS)
"""The critic's problem kinds the writer has specific wording for."""


def order_reference(analysis: TextAnalysis) -> str:
    """`` for order #12345`` (or empty): the first order id in the text, as customers write it."""
    if not analysis.order_ids:
        return ""
    first = analysis.order_ids[0]
    return f" for order #{first}" if first.isdigit() else f" for order {first}"


def topic_label(analysis: TextAnalysis, intent: str | None = None) -> str:
    """The label the prose is about: the chosen intent if the tables know it, else the text's."""
    if intent in vocab.INTENT_TOPICS:
        return intent
    return analysis.intent.value if analysis.intent.score > 0 else "other"


def reply(
    analysis: TextAnalysis, rng: random.Random, *, level: int = 0, intent: str | None = None
) -> str:
    """A polite customer-service reply that names the topic and the order it concerns."""
    label = topic_label(analysis, intent)
    topic = vocab.INTENT_TOPICS[label]
    ref = order_reference(analysis)
    if level >= MAX_LEVEL:
        return "We are looking into it."
    if level == 2:
        return f"Thanks for contacting us about {topic}{ref}; our team is on it."
    opening = f"thank you for contacting us about {topic}{ref}."
    action = rng.choice(vocab.INTENT_ACTIONS[label])
    if level == 1:
        return f"T{opening[1:]} {action}"
    parts = [rng.choice(_GREETINGS), opening]
    if analysis.angry or analysis.repeated or analysis.legal or analysis.fraud:
        parts.append(rng.choice(_EMPATHY))
    parts.append(action)
    parts.append(rng.choice(_CLOSINGS))
    return " ".join(parts)


def summary(analysis: TextAnalysis, *, level: int = 0, intent: str | None = None) -> str:
    """One sentence: who wants what, about which order, and in what mood."""
    label = topic_label(analysis, intent)
    text = f"Customer {_INTENT_SUMMARIES[label]}"
    if level >= MAX_LEVEL:
        return text + "."
    if analysis.order_ids:
        refs = ", ".join(
            f"#{o}" if o.isdigit() else o for o in analysis.order_ids[: 2 if level == 0 else 1]
        )
        text += f" (order {refs})"
    if level <= 1:
        moods = signal_phrases(analysis)
        if moods:
            text += ", and shows " + _join(moods[: 2 if level == 0 else 1])
    return text + "."


def signal_phrases(analysis: TextAnalysis) -> list[str]:
    """Human-readable names of the escalation signals present in the text."""
    phrases = []
    if analysis.legal:
        phrases.append("a legal threat")
    if analysis.fraud:
        phrases.append("signs of fraud")
    if analysis.angry:
        phrases.append("anger")
    if analysis.repeated:
        phrases.append("repeated failed contacts")
    if analysis.human_request:
        phrases.append("a request for a person")
    return phrases


def reason(analysis: TextAnalysis, decided: Mapping[str, Any], *, level: int = 0) -> str:
    """A short reason consistent with what the same answer has already decided."""
    verdict = _decided_value(decided, ("verdict", "decision", "action", "outcome"))
    signals = signal_phrases(analysis)
    if verdict == "escalate":
        found = _join(signals[:2]) if signals else "a risk"
        return f"The customer's message shows {found}, which needs a human agent."
    if verdict == "revise":
        return "The draft should name the next step and when the customer will hear back."
    if verdict == "approve":
        return "The draft answers the request politely and makes no unsupported claims."
    if level >= 2:
        return "Based on the customer's wording."
    matched = analysis.intent.matched[:3]
    text = (
        "The message mentions " + _join([f"'{m}'" for m in matched]) + "."
        if matched
        else "No specific topic keywords; treated as a general enquiry."
    )
    if signals and level == 0:
        text += " It also shows " + _join(signals[:2]) + "."
    return text


def problem_detail(kind: str | None, *, level: int = 0) -> str:
    """What is wrong with a draft, for a critic's problem of ``kind``."""
    if level >= 2:
        return "Needs a fix."
    if kind is not None and kind in _PROBLEM_DETAILS:
        return _PROBLEM_DETAILS[kind]
    return "The draft should be more specific about the next step."


def short_text(
    name: str, analysis: TextAnalysis, rng: random.Random, decided: Mapping[str, Any], level: int
) -> str:
    """A plausible value for a string field known only by its ``name``."""
    key = name.lower()
    label = topic_label(analysis, _decided_value(decided, ("intent", "category", "label")))
    if any(k in key for k in ("title", "subject", "headline")):
        return _INTENT_SUMMARIES[label].capitalize() + order_reference(analysis)
    if any(k in key for k in ("intent", "category", "topic", "label", "classification")):
        return label
    if "sentiment" in key or "mood" in key:
        return "negative" if analysis.angry else "neutral"
    if "tone" in key:
        return "empathetic" if analysis.needs_human else "friendly"
    if any(k in key for k in ("step", "action", "instruction", "note", "comment", "resolution")):
        action = rng.choice(vocab.INTENT_ACTIONS[label])
        return action if level == 0 else action.split(",")[0].rstrip(".") + "."
    if "name" in key:
        return "Customer"
    if "detail" in key or "description" in key:
        return summary(analysis, level=max(level, 1), intent=label)
    return vocab.INTENT_TOPICS[label].capitalize() if level < 2 else label.replace("_", " ")


def _decided_value(decided: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key, value in decided.items():
        if isinstance(value, str) and any(k in key.lower() for k in keys):
            return value
    return None


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
