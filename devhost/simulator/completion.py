"""Writing the answer to a validated request: content, finish reason, completion tokens.

Determinism: each choice draws from ``random.Random`` seeded with SHA-256 of the simulator seed,
the choice index and the canonical request body, so the same body and seed give the same text.

Budget: an answer never exceeds ``max_tokens``. Structured answers are rewritten at increasing
brevity (shorter strings, minimal arrays) until they fit, rather than cut mid-JSON; only when even
the most compact answer is too long is it truncated with ``finish_reason="length"``, as the real
service does. Plain text is truncated with ``finish_reason="length"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from devhost.simulator import writer
from devhost.simulator.analysis import TextAnalysis, analyse
from devhost.simulator.protocol import ChatCall, content_filter_results
from devhost.simulator.schema_gen import SchemaGenerator
from devhost.simulator.schemas import break_schema, validate
from devhost.simulator.tokens import count_text_tokens, truncate_to_tokens

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""Output cap when a request sets no max_tokens (also the quota estimate's default)."""

JSON_FAULTS = frozenset({"malformed", "schema"})


@dataclass(frozen=True)
class Choice:
    """One generated choice, ready for the response body."""

    content: str
    finish_reason: str
    completion_tokens: int
    filtered_category: str | None = None


@dataclass(frozen=True)
class Answer:
    choices: list[Choice]
    fault_applied: str | None
    """The content fault actually injected (None when it does not apply to this request)."""

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    def choice_bodies(self) -> list[dict[str, Any]]:
        return [
            {
                "index": index,
                "message": {"role": "assistant", "content": c.content, "refusal": None},
                "finish_reason": c.finish_reason,
                "logprobs": None,
                "content_filter_results": content_filter_results(
                    filtered_category=c.filtered_category
                ),
            }
            for index, c in enumerate(self.choices)
        ]


def fault_applies(call: ChatCall, fault: str | None) -> bool:
    """Malformed/schema faults only make sense when the request asked for JSON."""
    if fault in JSON_FAULTS:
        return call.response_format.kind != "text"
    return fault == "content_filter_completion"


def answer(call: ChatCall, *, seed: int, fault: str | None = None) -> Answer:
    """Every choice of the answer, with ``fault`` (a content fault) applied where it applies."""
    analysis = analyse(call.messages)
    limit = call.max_tokens or DEFAULT_MAX_OUTPUT_TOKENS
    applied = fault if fault_applies(call, fault) else None
    choices = [
        _choice(call, analysis, _rng(seed, index, call.digest), seed, limit, applied)
        for index in range(call.n)
    ]
    return Answer(choices=choices, fault_applied=applied)


def _rng(seed: int, index: int, digest: str) -> random.Random:
    material = hashlib.sha256(f"{seed}\x1f{index}\x1f{digest}".encode()).digest()
    return random.Random(int.from_bytes(material[:16], "big"))


def _choice(
    call: ChatCall,
    analysis: TextAnalysis,
    rng: random.Random,
    seed: int,
    limit: int,
    fault: str | None,
) -> Choice:
    kind = call.response_format.kind
    if kind == "text":
        content, finish = _plain_text(analysis, rng, limit)
    else:
        content, finish = _json_answer(call, analysis, rng, seed, limit, fault)
    if fault == "content_filter_completion":
        # The service stops the stream where the filter fired: JSON is cut to nothing, text
        # keeps what was already produced.
        partial = "" if kind != "text" else " ".join(content.split()[: len(content.split()) // 3])
        return Choice(partial, "content_filter", count_text_tokens(partial), "violence")
    return Choice(content, finish, count_text_tokens(content))


def _plain_text(analysis: TextAnalysis, rng: random.Random, limit: int) -> tuple[str, str]:
    text = writer.reply(analysis, rng, level=0)
    if count_text_tokens(text) <= limit:
        return text, "stop"
    return truncate_to_tokens(text, limit), "length"


def _json_answer(
    call: ChatCall,
    analysis: TextAnalysis,
    rng: random.Random,
    seed: int,
    limit: int,
    fault: str | None,
) -> tuple[str, str]:
    schema = call.response_format.schema
    state = rng.getstate()
    value: Any = None
    content = ""
    for level in range(writer.MAX_LEVEL + 1):
        rng.setstate(state)  # every level starts from the same draws: only brevity changes
        if schema is not None:
            value = SchemaGenerator(
                schema, analysis=analysis, rng=rng, seed=seed, level=level
            ).generate()
        else:
            value = _free_object(analysis, rng, level)
        content = _dump(value)
        if count_text_tokens(content) <= limit:
            break
    else:
        return truncate_to_tokens(content, limit), "length"
    if schema is not None:
        problems = validate(value, schema)
        if problems:
            log.warning(
                "generated answer breaks its schema at %s",
                ", ".join(p.split(":", 1)[0] for p in problems[:5]),
            )
    if fault == "schema":
        content = _dump(break_schema(value, schema) if schema is not None else [value])
    elif fault == "malformed":
        content = _malformed(content)
    return content, "stop"


def _free_object(analysis: TextAnalysis, rng: random.Random, level: int) -> dict[str, Any]:
    """The answer to ``json_object`` mode: a small, self-describing object."""
    return {
        "intent": analysis.intent.value if analysis.intent.score > 0 else "other",
        "language": analysis.language,
        "needs_human": analysis.needs_human,
        "reply": writer.reply(analysis, rng, level=level),
    }


def _dump(value: Any) -> str:
    # Models emit compact JSON in structured-output mode; so does the simulator.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _malformed(content: str) -> str:
    """Not JSON: a fenced block cut off half-way, as a truncated model answer looks."""
    return "```json\n" + content[: max(1, len(content) // 2)]
