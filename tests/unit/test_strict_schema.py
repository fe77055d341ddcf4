"""Azure OpenAI's strict structured-output subset: the checker, the reduction, and the agents.

The rules are Microsoft Learn's "How to use structured outputs with Azure OpenAI in Microsoft
Foundry Models", section "JSON Schema support and limitations" (ms.date 12/6/2025; on the older
Azure AI services page the section is "Supported schemas and limitations"):
https://learn.microsoft.com/azure/ai-foundry/openai/how-to/structured-outputs
Each test names the rule it holds; shared/llm/strict_schema.py says where the rest come from.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.agents import critic, escalation, intent, response
from shared.agents.structured import ask_structured, wire_schema
from shared.domain.agent_input import AgentInput, Draft
from shared.domain.results import (
    CriticResult,
    EscalationResult,
    IntentResult,
    ResponseResult,
)
from shared.errors import SchemaViolation
from shared.llm.strict_schema import (
    MAX_ENUM_VALUES,
    MAX_NESTING,
    MAX_PROPERTIES,
    UNSUPPORTED_BY_TYPE,
    strict_schema_violations,
    to_strict_schema,
)
from tests.support.fakes import (
    APPROVE,
    ESCALATION,
    INTENT_REFUND,
    REPLY,
    ScriptedModel,
)

RESULT_MODELS: list[type[BaseModel]] = [
    IntentResult,
    ResponseResult,
    CriticResult,
    EscalationResult,
]


def closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema inside the subset: every property required, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


def messages_of(schema: dict[str, Any]) -> list[str]:
    return [v.message for v in strict_schema_violations(schema)]


# -- what the agents send ------------------------------------------------------------------

AGENT_INPUT = AgentInput(
    conversation_id="c-1",
    customer_id="cust-1",
    channel="email",
    text="I want my money back for the kettle, order A-1001.",
    intent=IntentResult.model_validate(INTENT_REFUND),
    drafts=(Draft(0, "We will refund you."),),
    escalation_reason="legal threat",
)
AgentCall = Callable[[ScriptedModel], Awaitable[Any]]
AGENTS: dict[str, tuple[AgentCall, dict[str, Any]]] = {
    "intent": (lambda m: intent.classify_intent(AGENT_INPUT, llm=m), INTENT_REFUND),
    "response": (lambda m: response.draft_reply(AGENT_INPUT, llm=m), REPLY),
    "critic": (lambda m: critic.review_draft(AGENT_INPUT, llm=m), APPROVE),
    "escalation": (lambda m: escalation.route_to_human(AGENT_INPUT, llm=m), ESCALATION),
}


@pytest.mark.parametrize("stage", sorted(AGENTS))
async def test_every_agent_sends_a_schema_inside_azures_strict_subset(stage: str) -> None:
    run, answer = AGENTS[stage]
    model = ScriptedModel(answers={stage: [answer]})
    await run(model)
    (request,) = model.calls
    assert request.json_schema is not None
    assert strict_schema_violations(request.json_schema) == []


@pytest.mark.parametrize("model", RESULT_MODELS, ids=lambda m: m.__name__)
def test_the_result_models_own_schemas_break_the_subset_so_the_reduction_is_needed(
    model: type[BaseModel],
) -> None:
    # Each model bounds a length, a range or an item count: pydantic puts those in its schema.
    assert any("is not permitted" in m for m in messages_of(model.model_json_schema()))
    assert strict_schema_violations(wire_schema(model)) == []


def test_a_removed_bound_is_restated_for_the_model_in_the_description() -> None:
    schema = wire_schema(IntentResult)
    assert schema["properties"]["confidence"]["description"] == "Must be at least 0.0, at most 1.0."
    assert "maxItems" not in json.dumps(schema)
    entities = schema["$defs"]["Entities"]["properties"]["order_ids"]
    assert entities["description"] == "Must be at most 20 items."


@pytest.mark.parametrize(
    ("model", "answer", "field"),
    [
        (IntentResult, {**INTENT_REFUND, "confidence": 1.5}, "confidence"),
        (IntentResult, {**INTENT_REFUND, "language": "e"}, "language"),
        (
            IntentResult,
            {**INTENT_REFUND, "entities": {**INTENT_REFUND["entities"], "order_ids": ["A"] * 21}},
            "entities.order_ids",
        ),
        (ResponseResult, {"reply": ""}, "reply"),
        (ResponseResult, {"reply": "x" * 4001}, "reply"),
        (CriticResult, {**APPROVE, "score": -0.1}, "score"),
        (EscalationResult, {**ESCALATION, "summary": "s" * 2001}, "summary"),
    ],
)
def test_pydantic_still_rejects_an_answer_outside_the_bounds_the_wire_schema_lost(
    model: type[BaseModel], answer: dict[str, Any], field: str
) -> None:
    # Valid against the schema the service enforces...
    from devhost.simulator.schemas import validate

    assert validate(answer, wire_schema(model)) == []
    # ...and refused when parsed.
    with pytest.raises(ValidationError) as caught:
        model.model_validate(answer)
    assert {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()} == {field}


async def test_an_out_of_bounds_answer_takes_the_one_repair() -> None:
    out_of_bounds = {**INTENT_REFUND, "confidence": 1.5}
    model = ScriptedModel(answers={"intent": [out_of_bounds, INTENT_REFUND]})
    run = await intent.classify_intent(AGENT_INPUT, llm=model)
    assert run.result.confidence == INTENT_REFUND["confidence"]
    assert run.usage.calls == 2
    assert "confidence" in model.calls[1].messages[-1]["content"]


async def test_an_answer_out_of_bounds_twice_is_a_schema_violation() -> None:
    model = ScriptedModel(answers={"intent": [{**INTENT_REFUND, "language": "e"}]})
    with pytest.raises(SchemaViolation) as caught:
        await intent.classify_intent(AGENT_INPUT, llm=model)
    assert "language" in caught.value.description
    assert len(model.calls) == 2


# -- the checker, rule by rule ---------------------------------------------------------------


def test_a_schema_inside_the_subset_has_no_violations() -> None:
    schema = closed(
        {
            "name": {"type": "string", "description": "who"},
            "unit": {"type": ["string", "null"], "enum": ["F", "C", None]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "item": {
                "anyOf": [
                    closed({"sku": {"type": "string"}}),
                    closed({"street": {"type": "string"}, "city": {"type": "string"}}),
                ]
            },
            "kind": {"const": "order"},
        },
        title="Example",
    )
    assert strict_schema_violations(schema) == []


@pytest.mark.parametrize(
    ("type_", "keyword", "value"),
    [
        (type_, keyword, "x" if keyword in ("pattern", "format") else 1)
        for type_, keywords in UNSUPPORTED_BY_TYPE.items()
        for keyword in keywords
    ],
)
def test_every_documented_unsupported_keyword_is_refused(
    type_: str, keyword: str, value: Any
) -> None:
    # "Unsupported type-specific keywords": the doc's table, per type.
    schema = closed({"field": {"type": type_, keyword: value}})
    if type_ == "object":
        schema["properties"]["field"] = closed({}, **{keyword: value})
    assert f"In context=('properties', 'field'), '{keyword}' is not permitted." in messages_of(
        schema
    )


@pytest.mark.parametrize(
    "keyword", ["default", "allOf", "oneOf", "not", "if", "exclusiveMinimum", "examples"]
)
def test_keywords_outside_the_documented_subset_are_refused(keyword: str) -> None:
    schema = closed({"field": {"type": "integer", keyword: 0}})
    assert f"In context=('properties', 'field'), '{keyword}' is not permitted." in messages_of(
        schema
    )


def test_additional_properties_must_be_false_on_every_object_nested_too() -> None:
    # "additionalProperties: false must always be set in objects".
    inner = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    open_root = {**closed({"inner": inner}), "additionalProperties": True}
    assert messages_of(open_root) == [
        "In context=(), 'additionalProperties' is required to be supplied and to be false.",
        "In context=('properties', 'inner'), 'additionalProperties' is required to be supplied "
        "and to be false.",
    ]


def test_every_property_must_be_required_and_only_properties() -> None:
    # "All fields must be required".
    schema = closed({"a": {"type": "string"}, "b": {"type": "string"}})
    schema["required"] = ["a", "c"]
    assert messages_of(schema) == [
        "In context=(), 'required' is required to be supplied and to be an array including "
        "every key in properties. Missing 'b'.",
        "In context=(), 'required' is required to be supplied and to be an array including "
        "every key in properties. Extra required key 'c' supplied.",
    ]


@pytest.mark.parametrize(
    "root",
    [
        {"anyOf": [closed({"a": {"type": "string"}}), closed({"b": {"type": "string"}})]},
        {"type": "array", "items": {"type": "string"}},
    ],
)
def test_the_root_must_be_an_object_and_not_any_of(root: dict[str, Any]) -> None:
    # "Root objects cannot be the anyOf type".
    assert [v.keyword for v in strict_schema_violations(root)][:1] == ["type"]


def test_branches_of_any_of_follow_the_same_subset() -> None:
    # "Nested schemas using anyOf must adhere to the overall JSON Schema subset".
    loose = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}
    schema = closed({"item": {"anyOf": [loose, {"type": "null"}]}})
    assert messages_of(schema) == [
        "In context=('properties', 'item', 'anyOf', 0), 'additionalProperties' is required to "
        "be supplied and to be false.",
        "In context=('properties', 'item', 'anyOf', 0), 'required' is required to be supplied "
        "and to be an array including every key in properties. Missing 'a'.",
        "In context=('properties', 'item', 'anyOf', 0, 'properties', 'a'), 'pattern' is not "
        "permitted.",
    ]


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = closed({"leaf": {"type": "string"}})
    for _ in range(levels - 1):
        schema = closed({"child": schema})
    return schema


def test_five_levels_of_nesting_pass_and_six_do_not() -> None:
    # "A schema may have up to 100 object properties total, with up to five levels of nesting".
    assert strict_schema_violations(_nested(MAX_NESTING)) == []
    (too_deep,) = strict_schema_violations(_nested(MAX_NESTING + 1))
    assert too_deep.context == ("properties", "child") * MAX_NESTING
    assert "nested 6 levels deep" in too_deep.message


def test_nesting_counts_through_definitions_and_arrays() -> None:
    level = {"$ref": "#/$defs/L1"}
    defs = {
        f"L{i}": closed({"next": {"type": "array", "items": {"$ref": f"#/$defs/L{i + 1}"}}})
        for i in range(1, MAX_NESTING + 1)
    }
    defs[f"L{MAX_NESTING + 1}"] = closed({"leaf": {"type": "string"}})
    schema = closed({"first": level}, **{"$defs": defs})
    assert any("levels deep" in m for m in messages_of(schema))


def test_one_hundred_properties_pass_and_one_more_does_not() -> None:
    fields = {f"f{i}": {"type": "string"} for i in range(MAX_PROPERTIES)}
    assert strict_schema_violations(closed(fields)) == []
    fields["one_more"] = {"type": "string"}
    assert messages_of(closed(fields)) == [
        "The schema has 101 object properties in total; at most 100 are allowed."
    ]


def test_a_definition_counts_its_properties_once_however_often_it_is_referenced() -> None:
    item = closed({f"p{i}": {"type": "string"} for i in range(40)})
    uses = {f"use{i}": {"$ref": "#/$defs/Item"} for i in range(5)}
    assert strict_schema_violations(closed(uses, **{"$defs": {"Item": item}})) == []


def test_five_hundred_enum_values_pass_and_one_more_does_not() -> None:
    # OpenAI's limit (Azure supports "the same subset"); the service's text for it is known.
    half = MAX_ENUM_VALUES // 2
    schema = closed(
        {
            "a": {"type": "string", "enum": [f"a{i}" for i in range(half)]},
            "b": {"type": "string", "enum": [f"b{i}" for i in range(MAX_ENUM_VALUES - half)]},
        }
    )
    assert strict_schema_violations(schema) == []
    schema["properties"]["b"]["enum"].append("extra")
    assert messages_of(schema) == [
        "Expected at most 500 enum values in total within a single schema when using "
        "structured outputs, but received 501. Consider reducing the number of enums, or use "
        "'strict: false' to opt out of structured outputs."
    ]


def test_a_large_string_enum_is_limited_in_total_length() -> None:
    values = [f"{i:03d}-" + "v" * 26 for i in range(251)]  # 251 values of 30 characters
    (violation,) = strict_schema_violations(closed({"e": {"type": "string", "enum": values}}))
    assert violation.context == ("properties", "e")
    assert "7500 characters" in violation.message


def test_names_and_enum_values_are_limited_in_total_length() -> None:
    long_names = {("n" * 99) + f"{i:02d}": {"type": "string"} for i in range(99)}
    (violation,) = strict_schema_violations(
        closed({**long_names, "e": {"type": "string", "enum": ["x" * 6000]}})
    )
    assert "at most 15000 are allowed" in violation.message


def test_definitions_and_recursion_are_supported() -> None:
    # "Definitions are supported"; "Recursive schemas are supported" (root "#" and explicit).
    node = closed({"value": {"type": "number"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}]}})
    node["properties"]["next"]["anyOf"].append({"type": "null"})
    explicit = closed({"list": {"$ref": "#/$defs/node"}}, **{"$defs": {"node": node}})
    to_root = closed(
        {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}}
    )
    assert strict_schema_violations(explicit) == []
    assert strict_schema_violations(to_root) == []


def test_a_ref_may_not_have_siblings_and_must_resolve() -> None:
    schema = closed(
        {
            "a": {"$ref": "#/$defs/A", "description": "the a"},
            "b": {"$ref": "#/$defs/Missing"},
        },
        **{"$defs": {"A": closed({"x": {"type": "string"}})}},
    )
    assert messages_of(schema) == [
        "context=('properties', 'a'), $ref cannot have keywords {'description'}.",
        "In context=('properties', 'b'), '$ref' '#/$defs/Missing' does not resolve.",
    ]


def test_an_unused_definition_is_checked_too() -> None:
    schema = closed(
        {"a": {"type": "string"}}, **{"$defs": {"Unused": {"type": "string", "format": "email"}}}
    )
    assert messages_of(schema) == ["In context=('$defs', 'Unused'), 'format' is not permitted."]


# -- the reduction ---------------------------------------------------------------------------


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(pattern=r"^[A-Z]{3}-\d+$", description="stock keeping unit")
    quantity: int = Field(ge=1, le=99)


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[Part] = Field(min_length=1, max_length=5)
    main: Part = Field(description="the part the order is for")
    colour: Colour = Colour.RED
    note: str | None = None
    priority: int = 3
    gift: Part | None = None


def test_the_reduction_of_an_arbitrary_model_is_inside_the_subset() -> None:
    raw = Order.model_json_schema()
    assert strict_schema_violations(raw) != []
    reduced = to_strict_schema(raw)
    assert strict_schema_violations(reduced) == []
    properties = reduced["properties"]
    assert reduced["required"] == list(Order.model_fields)
    # Optional fields became required and nullable, as the doc's "emulate an optional parameter
    # by using a union type with null".
    assert properties["priority"]["type"] == ["integer", "null"]
    assert {"type": "null"} in properties["colour"]["anyOf"]
    assert {"type": "null"} in properties["note"]["anyOf"]
    # A $ref with a description is inlined; the part's bounds are restated in words.
    assert properties["main"]["description"] == "the part the order is for"
    assert properties["main"]["properties"]["sku"]["description"] == (
        "stock keeping unit Must be matching the pattern ^[A-Z]{3}-\\d+$."
    )
    assert raw == Order.model_json_schema()  # the source is left as it was


async def test_a_null_for_an_optional_field_gives_its_default() -> None:
    answer = {
        "parts": [{"sku": "ABC-1", "quantity": 2}],
        "main": {"sku": "ABC-1", "quantity": 2},
        "colour": None,
        "note": None,
        "priority": None,
        "gift": None,
    }
    model = ScriptedModel(answers={"intent": [answer]})
    run = await ask_structured(
        model, stage="intent", system="s", user="u", result_type=Order, max_tokens=50
    )
    assert (run.result.colour, run.result.note, run.result.priority) == (Colour.RED, None, 3)
    assert run.usage.calls == 1
    assert strict_schema_violations(model.calls[0].json_schema) == []


async def test_the_bounds_of_a_reduced_model_are_still_enforced_after_parsing() -> None:
    bad = {
        "parts": [],
        "main": {"sku": "nope", "quantity": 100},
        "colour": "red",
        "note": None,
        "priority": 1,
        "gift": None,
    }
    model = ScriptedModel(answers={"intent": [bad]})
    with pytest.raises(SchemaViolation) as caught:
        await ask_structured(
            model, stage="intent", system="s", user="u", result_type=Order, max_tokens=50
        )
    assert "parts" in caught.value.description
    assert "main.sku" in caught.value.description


class Tagged(BaseModel):
    tags: dict[str, str]


def test_a_map_has_no_strict_form_and_is_refused_not_emptied() -> None:
    reduced = to_strict_schema(Tagged.model_json_schema())
    assert reduced["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert messages_of(reduced) == [
        "In context=('properties', 'tags'), 'additionalProperties' is required to be supplied "
        "and to be false."
    ]
    with pytest.raises(TypeError, match="Tagged has no strict schema"):
        wire_schema(Tagged)
