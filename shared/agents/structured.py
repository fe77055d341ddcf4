"""Structured output: ask for JSON against a result schema, validate, repair at most once.

The schema sent is the result model's, reduced to the strict subset Azure OpenAI accepts
(``shared.llm.strict_schema``): length, range and item-count bounds are not part of it, so
pydantic enforces them when the answer is parsed, and an answer outside them takes the one repair.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.domain.messages import describe_validation_error
from shared.errors import ContentFiltered, SchemaViolation
from shared.llm.strict_schema import describe, strict_schema_violations, to_strict_schema
from shared.ports import ChatModel, ChatRequest, Usage

ResultT = TypeVar("ResultT", bound=BaseModel)

PROMPTS = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class AgentRun(Generic[ResultT]):
    """What an agent returns: its typed result and what producing it cost."""

    result: ResultT
    usage: Usage


@cache
def _wire_schema(result_type: type[BaseModel]) -> dict[str, Any]:
    schema = to_strict_schema(result_type.model_json_schema())
    violations = strict_schema_violations(schema)
    if violations:
        # A model the reduction cannot express (allOf, free-form dicts...): a bug in the model.
        raise TypeError(f"{result_type.__name__} has no strict schema: {describe(violations)}")
    return schema


def wire_schema(result_type: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent for ``result_type``: its model's schema in the strict subset."""
    return copy.deepcopy(_wire_schema(result_type))


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
    schema = wire_schema(result_type)
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
        return result_type.model_validate(_drop_stand_in_nulls(data, result_type)), ""
    except ValidationError as exc:
        return None, describe_validation_error(exc)


def _drop_stand_in_nulls(data: Any, model: type[BaseModel]) -> Any:
    """Remove the ``null`` a strict answer gives for a field the model may leave out.

    In the strict schema every field is required and an optional one is nullable, so an answer
    says ``null`` where it would have left the field out; a field with a default that does not
    itself accept None then gets its default, as if the key were absent.
    """
    if not isinstance(data, dict):
        return data
    cleaned = dict(data)
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in cleaned:
            continue
        value = cleaned[key]
        if value is None and not info.is_required() and not _accepts_none(info.annotation):
            del cleaned[key]
            continue
        nested = _model_of(info.annotation)
        if nested is not None:
            if isinstance(value, list):
                cleaned[key] = [_drop_stand_in_nulls(v, nested) for v in value]
            else:
                cleaned[key] = _drop_stand_in_nulls(value, nested)
    return cleaned


def _accepts_none(annotation: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(None)
    except ValidationError:
        return False
    return True


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The result model a field holds directly or as a list's items, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
