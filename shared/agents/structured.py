"""Structured output: ask for JSON against a result schema, validate, repair at most once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from string import Template
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ContentFiltered, SchemaViolation
from shared.messages import describe_validation_error
from shared.ports import ChatModel, ChatRequest, ChatResult

ResultT = TypeVar("ResultT", bound=BaseModel)

PROMPTS = Path(__file__).parent / "prompts"


@dataclass
class Usage:
    """Tokens and cost of every model call one stage made (a repair is a second call)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    cached_calls: int = 0
    deployments: list[str] = field(default_factory=list)
    by_deployment: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Prompt tokens, completion tokens and cost per deployment that answered."""

    def add(self, result: ChatResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cost_usd += result.cost_usd
        self.calls += 1
        self.cached_calls += int(result.cached)
        if result.deployment not in self.deployments:
            self.deployments.append(result.deployment)
        prompt, completion, cost = self.by_deployment.get(result.deployment, (0, 0, 0.0))
        self.by_deployment[result.deployment] = (
            prompt + result.prompt_tokens,
            completion + result.completion_tokens,
            cost + result.cost_usd,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "costUsd": round(self.cost_usd, 8),
            "calls": self.calls,
            "cachedCalls": self.cached_calls,
            "deployments": list(self.deployments),
        }


@dataclass(frozen=True)
class AgentRun(Generic[ResultT]):
    """What an agent returns: its typed result and what producing it cost."""

    result: ResultT
    usage: Usage


@cache
def load_prompt(name: str) -> Template:
    """A prompt file beside the agents, as a ``string.Template`` (``$name`` placeholders)."""
    return Template((PROMPTS / f"{name}.md").read_text(encoding="utf-8"))


async def ask_structured(
    llm: ChatModel,
    *,
    stage: str,
    system: str,
    user: str,
    result_type: type[ResultT],
    max_tokens: int,
    conversation_id: str = "",
    customer_id: str = "",
) -> AgentRun[ResultT]:
    """Call the model for a ``result_type``; on invalid output ask once for a repair.

    Raises ``SchemaViolation`` when the repaired answer is still not valid. Content-filter and
    quota errors from the model propagate; a refusal carries the usage of the calls before it.
    """
    schema = result_type.model_json_schema()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    usage = Usage()
    problem = ""
    for attempt in range(2):
        request = ChatRequest(
            stage=stage,
            messages=messages,
            schema_name=result_type.__name__,
            json_schema=schema,
            max_tokens=max_tokens,
            temperature=0.0,
            conversation_id=conversation_id,
            customer_id=customer_id,
        )
        try:
            answer = await llm.complete(request)
        except ContentFiltered as exc:
            exc.usage = usage  # a filtered repair still leaves the first call to pay for
            raise
        usage.add(answer)
        parsed, problem = _parse(answer.content, result_type)
        if parsed is not None:
            return AgentRun(result=parsed, usage=usage)
        if attempt == 0:
            messages = [
                *messages,
                {"role": "assistant", "content": answer.content[:4000]},
                {
                    "role": "user",
                    "content": (
                        "Your previous answer was not valid against the required JSON schema: "
                        f"{problem}. Answer again with only a JSON object that satisfies the "
                        "schema."
                    ),
                },
            ]
    refused = SchemaViolation(f"{stage} output invalid after one repair: {problem}")
    refused.usage = usage
    raise refused


def _parse(content: str, result_type: type[ResultT]) -> tuple[ResultT | None, str]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON (line {exc.lineno} column {exc.colno})"
    try:
        return result_type.model_validate(data), ""
    except ValidationError as exc:
        return None, describe_validation_error(exc)
