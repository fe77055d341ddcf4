"""What an agent sees of a conversation: built from the stored document by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain.results import CriticResult, IntentResult
from shared.domain.turns import EarlierTurn, render_earlier


@dataclass(frozen=True)
class Draft:
    """One response draft and the critic's review of it, if it was reviewed."""

    revision: int
    reply: str
    review: CriticResult | None = None


@dataclass(frozen=True)
class AgentInput:
    conversation_id: str
    customer_id: str
    channel: str
    text: str
    revision: int = 0
    max_revisions: int = 2
    intent: IntentResult | None = None
    drafts: tuple[Draft, ...] = field(default_factory=tuple)
    escalation_reason: str = ""
    earlier: tuple[EarlierTurn, ...] = field(default_factory=tuple)
    """Earlier turns of the conversation, bounded (``shared.domain.turns``)."""
    omitted_turns: int = 0

    @property
    def earlier_text(self) -> str:
        """The earlier turns for a prompt; empty for a first turn."""
        return render_earlier(self.earlier, self.omitted_turns)

    @property
    def latest_draft(self) -> Draft | None:
        return self.drafts[-1] if self.drafts else None


def render_history(drafts: tuple[Draft, ...]) -> str:
    """Earlier drafts with the reviewer's findings, for the next draft or the escalation."""
    lines: list[str] = []
    for draft in drafts:
        lines.append(f"<draft revision={draft.revision}>\n{draft.reply}\n</draft>")
        if draft.review is not None:
            problems = "; ".join(f"{p.kind.value}: {p.detail}" for p in draft.review.problems)
            lines.append(
                f"Reviewer verdict: {draft.review.verdict.value} "
                f"(score {draft.review.score:.2f}). Problems: {problems or 'none'}"
            )
    return "\n".join(lines)
