"""The wire format: validating chat-completion requests and building Azure-shaped bodies.

Request validation follows the service's documented rules (messages required, known roles,
integer token limits, ``json_object`` needs the word "json" in the messages, a ``strict`` schema
inside Azure's structured-output subset...) and reports the first problem as an OpenAI/Azure
``invalid_request_error`` naming the parameter.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from devhost.simulator.schemas import SchemaResolutionError, resolve_ref
from shared.llm.strict_schema import strict_schema_violations

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
_SCHEMA_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_N = 16

ResponseKind = Literal["text", "json_object", "json_schema"]


class RequestError(Exception):
    """A request the service would refuse with 400; ``param`` names the offending field."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = "invalid_value"
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return invalid_request_body(self.message, param=self.param, code=self.code)


@dataclass(frozen=True)
class ResponseFormat:
    """What shape the answer must take."""

    kind: ResponseKind = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class ChatCall:
    """A validated chat-completion request."""

    messages: list[dict[str, Any]]
    max_tokens: int | None
    n: int
    response_format: ResponseFormat
    digest: str
    """SHA-256 of the canonical body: same body, same digest (drives determinism)."""


def parse_chat_body(body: Any) -> ChatCall:
    """Validate a decoded request body; raise ``RequestError`` on the first problem."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", code="invalid_type")
    messages = _messages(body.get("messages"))
    max_tokens = _max_tokens(body)
    n = _int_in(body, "n", 1, _MAX_N, default=1)
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        _number_in(body, name, low, high)
    if body.get("stream") not in (None, False):
        raise RequestError(
            "Streaming is not supported by the simulator; send stream=false.",
            param="stream",
            code="unsupported_value",
        )
    response_format = _response_format(body.get("response_format"), messages)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return ChatCall(
        messages=messages,
        max_tokens=max_tokens,
        n=n,
        response_format=response_format,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def _messages(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        raise RequestError(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(raw, list) or not raw:
        raise RequestError(
            "'messages' must be a non-empty array of message objects.",
            param="messages",
            code="invalid_type",
        )
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object.", param=where, code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of {sorted(ROLES)}, got {role!r}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise RequestError(
                    f"Missing required parameter: '{where}.content'.",
                    param=f"{where}.content",
                    code="missing_required_parameter",
                )
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise RequestError(
                        f"{where}.content[{part_index}] must be an object with a 'type'.",
                        param=f"{where}.content[{part_index}]",
                        code="invalid_type",
                    )
        elif not isinstance(content, str):
            raise RequestError(
                f"{where}.content must be a string or an array of content parts.",
                param=f"{where}.content",
                code="invalid_type",
            )
    return raw


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise RequestError(
            "max_tokens and max_completion_tokens cannot both be set; use one of them.",
            param="max_tokens",
        )
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            value: int = _int_in(body, name, 1, 1_000_000, default=None)
            return value
    return None


def _int_in(body: Mapping[str, Any], name: str, low: int, high: int, *, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else _checked(name, value, low, high, int, "an integer")


def _number_in(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None:
        _checked(name, value, low, high, int | float, "a number")


def _checked(name: str, value: Any, low: float, high: float, kind: Any, what: str) -> Any:
    """``value`` if it is a ``kind`` (never a bool) within ``[low, high]``; else RequestError."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RequestError(
            f"Invalid type for '{name}': expected {what}, got {type(value).__name__}.",
            param=name,
            code="invalid_type",
        )
    if not low <= value <= high:
        raise RequestError(f"Invalid '{name}': {value} is outside [{low}, {high}].", param=name)
    return value


def _response_format(raw: Any, messages: list[dict[str, Any]]) -> ResponseFormat:
    if raw is None:
        return ResponseFormat()
    if not isinstance(raw, dict):
        raise RequestError(
            "'response_format' must be an object.", param="response_format", code="invalid_type"
        )
    kind = raw.get("type")
    if kind == "text":
        return ResponseFormat()
    if kind == "json_object":
        if not any("json" in _text_of(m).lower() for m in messages):
            raise RequestError(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
            )
        return ResponseFormat(kind="json_object")
    if kind != "json_schema":
        raise RequestError(
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or "
            f"'json_schema', got {kind!r}.",
            param="response_format.type",
        )
    return _json_schema_format(raw.get("json_schema"))


def _json_schema_format(spec: Any) -> ResponseFormat:
    """``response_format.json_schema``: a valid name, a sound schema, within the strict subset
    when ``strict``."""
    if not isinstance(spec, dict):
        raise RequestError(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME_RE.match(name):
        raise RequestError(
            "Invalid 'response_format.json_schema.name': must be 1-64 characters of "
            "a-z, A-Z, 0-9, '_' or '-'.",
            param="response_format.json_schema.name",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise RequestError(
            f"Invalid schema for response_format '{name}': the schema must be an object.",
            param="response_format.json_schema.schema",
            code="invalid_type",
        )
    if schema is not None:
        problem = schema_problem(schema)
        if problem is not None:
            raise RequestError(
                f"Invalid schema for response_format '{name}': {problem}",
                param="response_format",
            )
    strict = spec.get("strict", False)
    if not isinstance(strict, bool):
        raise RequestError(
            "Invalid type for 'response_format.json_schema.strict': expected a boolean.",
            param="response_format.json_schema.strict",
            code="invalid_type",
        )
    if strict and schema is not None:
        violations = strict_schema_violations(schema)
        if violations:
            # Azure OpenAI's 400 for a schema outside the strict subset: the first violation,
            # param "response_format", code null (shared/llm/strict_schema.py cites the rules).
            raise RequestError(
                f"Invalid schema for response_format '{name}': {violations[0].message}",
                param="response_format",
                code=None,
            )
    return ResponseFormat(kind="json_schema", name=name, schema=schema, strict=strict)


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_SINGLES = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "propertyNames",
)


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """The first structural problem of a response schema (dangling ``$ref``, unknown type,
    empty enum...), or None. Values are never echoed, only where the problem is."""
    pending: list[tuple[Any, str]] = [(schema, "()")]
    while pending:
        node, where = pending.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, Mapping):
            return f"In context={where}, a schema must be an object."
        ref = node.get("$ref")
        if ref is not None:
            try:
                resolve_ref(schema, ref if isinstance(ref, str) else "")
            except SchemaResolutionError as exc:
                return f"In context={where}, {exc}."
        declared = node.get("type")
        types = declared if isinstance(declared, list) else [declared]
        if declared is not None and not all(t in JSON_TYPES for t in types):
            return f"In context={where}, 'type' must be one of {sorted(JSON_TYPES)}."
        if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
            return f"In context={where}, 'enum' must be a non-empty array."
        if "required" in node and not (
            isinstance(node["required"], list) and all(isinstance(r, str) for r in node["required"])
        ):
            return f"In context={where}, 'required' must be an array of property names."
        for key in _SCHEMA_MAPS:
            children = node.get(key)
            if children is None:
                continue
            if not isinstance(children, Mapping):
                return f"In context={where}, '{key}' must be an object."
            pending.extend((child, f"{where}.{key}.{name}") for name, child in children.items())
        for key in _SCHEMA_LISTS:
            branches = node.get(key)
            if branches is None:
                continue
            if not isinstance(branches, list):
                return f"In context={where}, '{key}' must be an array."
            pending.extend((child, f"{where}.{key}[{i}]") for i, child in enumerate(branches))
        for key in _SCHEMA_SINGLES:
            if key in node:
                pending.append((node[key], f"{where}.{key}"))
    return None


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


# -- error bodies ---------------------------------------------------------------------------

UNAUTHORIZED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
DEPLOYMENT_NOT_FOUND_MESSAGE = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)
PROMPT_FILTERED_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
SERVER_ERROR_MESSAGES: dict[int, tuple[str, str]] = {
    500: ("InternalServerError", "The server had an error while processing your request."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: (
        "ServiceUnavailable",
        "The service is temporarily unable to process your request. Please try again later.",
    ),
    504: ("GatewayTimeout", "The server did not receive a timely response from upstream."),
}


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact JSON answer (no spaces, UTF-8 as is), as the service sends them."""
    return web.json_response(
        body,
        status=status,
        headers=dict(headers or {}),
        dumps=lambda value: json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    )


def error_body(code: str | None, message: str, **extra: Any) -> dict[str, Any]:
    """Azure's error envelope: ``{"error": {"code": ..., "message": ..., ...}}``."""
    return {"error": {"code": code, "message": message, **extra}}


def invalid_request_body(message: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return error_body(code, message, param=param, type="invalid_request_error")


def rate_limit_message(api_version: str, retry_after_s: int, limited_by: str | None) -> str:
    """The text Azure sends with a 429, naming the limit that was hit."""
    which = "call rate limit" if limited_by == "requests" else "token rate limit"
    return (
        f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"{api_version} have exceeded {which} of your current OpenAI S0 pricing tier. Please "
        f"retry after {retry_after_s} seconds. Please go here: https://aka.ms/oai/quotaincrease "
        f"if you would like to further increase the default rate limit."
    )


def content_filter_results(*, filtered_category: str | None = None) -> dict[str, Any]:
    """Per-category filter results; ``filtered_category`` is flagged at high severity."""
    results: dict[str, Any] = {}
    for category in ("hate", "self_harm", "sexual", "violence"):
        flagged = category == filtered_category
        results[category] = {"filtered": flagged, "severity": "high" if flagged else "safe"}
    return results


def prompt_filtered_body() -> dict[str, Any]:
    results = content_filter_results(filtered_category="hate")
    results["jailbreak"] = {"filtered": False, "detected": False}
    return error_body(
        "content_filter",
        PROMPT_FILTERED_MESSAGE,
        param="prompt",
        status=400,
        innererror={"code": "ResponsibleAIPolicyViolation", "content_filter_result": results},
    )


def prompt_filter_results() -> list[dict[str, Any]]:
    results = content_filter_results()
    results["jailbreak"] = {"filtered": False, "detected": False}
    return [{"prompt_index": 0, "content_filter_results": results}]
