"""``ChatEndpoint`` over the openai SDK: Azure OpenAI with Entra ID, or any OpenAI-compatible API.

* Azure (``AZURE_OPENAI_ENDPOINT``): ``AsyncAzureOpenAI`` with a bearer-token provider from
  azure-identity (the user-assigned managed identity when a client id is set, else
  ``DefaultAzureCredential``), or the api-key when one is configured (the simulator).
* OpenAI-compatible (``OPENAI_BASE_URL``: Ollama, vLLM, the simulator's ``/v1``): ``AsyncOpenAI``.

One client per process, made on first use and reused (it pools connections), closed by
``close()``. The SDK's own retries are off (``max_retries=0``): ``GuardedChatModel`` is the one
retry layer, and SDK retries under it would multiply attempts and sleep under the message lock.
Each call reads the raw response so the ``x-ratelimit-*`` / ``retry-after*`` headers reach the
limiter, and every SDK failure is mapped onto the neutral ``EndpointError`` kinds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from shared.adapters.azure.lazy_client import managed_identity_credential
from shared.config import LLMSettings
from shared.errors import ConfigError
from shared.llm.endpoint import (
    EndpointCall,
    EndpointContentFiltered,
    EndpointError,
    EndpointMalformed,
    EndpointRejected,
    EndpointReply,
    EndpointServerError,
    EndpointThrottled,
    EndpointTimeout,
    EndpointUnreachable,
    parse_rate_headers,
)
from shared.llm.lanes import current_lane
from shared.telemetry.tracing import llm_span

log = logging.getLogger(__name__)

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
_CONTENT_FILTER_CODES = frozenset({"content_filter", "ResponsibleAIPolicyViolation"})

TokenProvider = Callable[[], Awaitable[str]]


class OpenAIChatEndpoint:
    """Chat completions through one lazily built, reused SDK client."""

    def __init__(
        self,
        settings: LLMSettings,
        *,
        client: openai.AsyncOpenAI | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        if settings.endpoint is None and settings.base_url is None:
            raise ConfigError("AZURE_OPENAI_ENDPOINT", "missing: set it, or OPENAI_BASE_URL")
        self._settings = settings
        self._client = client
        self._owns_client = client is None
        self._token_provider = token_provider
        self._credential: Any = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The process's SDK client, built on first use."""
        if self._client is None:
            self._client = self._build_client()
        return self._client

    def _build_client(self) -> openai.AsyncOpenAI:
        s = self._settings
        common: dict[str, Any] = {"max_retries": 0, "timeout": s.timeout_s}
        if s.endpoint is not None:
            if s.api_key is not None:
                return openai.AsyncAzureOpenAI(
                    azure_endpoint=s.endpoint,
                    api_version=s.api_version,
                    api_key=s.api_key.reveal(),
                    **common,
                )
            return openai.AsyncAzureOpenAI(
                azure_endpoint=s.endpoint,
                api_version=s.api_version,
                azure_ad_token_provider=self._token_provider or self._entra_token_provider(),
                **common,
            )
        if s.api_key is None:
            raise ConfigError("AZURE_OPENAI_API_KEY", "required with OPENAI_BASE_URL")
        return openai.AsyncOpenAI(base_url=s.base_url, api_key=s.api_key.reveal(), **common)

    def _entra_token_provider(self) -> TokenProvider:
        from azure.identity.aio import get_bearer_token_provider

        self._credential = managed_identity_credential(self._settings.managed_identity_client_id)
        provider: TokenProvider = get_bearer_token_provider(
            self._credential, COGNITIVE_SERVICES_SCOPE
        )
        return provider

    async def complete(self, call: EndpointCall) -> EndpointReply:
        """Send one chat completion; raise an ``EndpointError`` subclass on any failure.

        Each call is one GenAI client span under the active stage span (so every retry and
        429 shows): deployment, attempt, time waited for quota, HTTP status, tokens and cost.
        """
        with llm_span(
            deployment=call.deployment, stage=call.stage or "unknown", system=self._system
        ) as span:
            span.attempt(call.attempt, quota_wait_s=call.quota_wait_s, lane=str(current_lane()))
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**_request(call))
            except openai.APIError as exc:
                error = _map_error(exc)
                status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
                span.answered(error.kind, status=status, retry_after_s=error.rate.retry_after_s)
                raise error from None
            except asyncio.CancelledError:
                span.answered("cancelled", status=None, retry_after_s=None)
                raise
            rate = parse_rate_headers(raw.headers)
            try:
                try:
                    completion = raw.parse()
                except (ValueError, openai.APIResponseValidationError) as exc:
                    raise EndpointMalformed(
                        f"unreadable answer: {type(exc).__name__}", rate=rate
                    ) from None
                reply = _to_reply(completion, rate)
            except EndpointMalformed as exc:
                span.answered(exc.kind, status=raw.status_code, retry_after_s=None)
                raise
            span.answered("ok", status=raw.status_code, retry_after_s=None)
            span.record(
                reply.prompt_tokens,
                reply.completion_tokens,
                self._settings.price_of(
                    call.deployment, reply.prompt_tokens, reply.completion_tokens
                ),
                finish_reason=reply.finish_reason or None,
                response_model=reply.model or None,
            )
            return reply

    @property
    def _system(self) -> str:
        """``gen_ai.system`` of the calls: Azure OpenAI, or another OpenAI-compatible API."""
        return "az.ai.openai" if self._settings.endpoint is not None else "openai"

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.close()
        self._client = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None


def _request(call: EndpointCall) -> dict[str, Any]:
    """The SDK's keyword arguments for ``call``: a strict JSON schema when it has one."""
    kwargs: dict[str, Any] = {
        "model": call.deployment,
        "messages": call.messages,
        "max_tokens": call.max_tokens,
        "temperature": call.temperature,
        "timeout": call.timeout_s,
    }
    if call.json_schema is not None:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": call.schema_name or "result",
                "schema": call.json_schema,
                "strict": True,
            },
        }
    return kwargs


def _to_reply(completion: object, rate: Any) -> EndpointReply:
    if not isinstance(completion, ChatCompletion):
        raise EndpointMalformed("the answer is not a chat completion", rate=rate)
    try:
        choice = completion.choices[0]
        usage = completion.usage
        if usage is None:
            raise EndpointMalformed("the answer has no token usage", rate=rate)
        return EndpointReply(
            content=choice.message.content or "",
            # The SDK builds responses leniently: a field its types promise may still be None.
            finish_reason=str(getattr(choice, "finish_reason", None) or ""),
            prompt_tokens=int(usage.prompt_tokens),
            completion_tokens=int(usage.completion_tokens),
            model=str(getattr(completion, "model", None) or ""),
            rate=rate,
        )
    except (AttributeError, IndexError, TypeError, ValueError):
        raise EndpointMalformed("the answer lacks choices or usage", rate=rate) from None


def _error_code(body: object) -> str | None:
    """The error code of an OpenAI/Azure error body, looking into Azure's ``innererror`` too."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error", body)
    if not isinstance(error, Mapping):
        return None
    inner = error.get("innererror")
    if isinstance(inner, Mapping) and inner.get("code") in _CONTENT_FILTER_CODES:
        return str(inner["code"])
    code = error.get("code")
    return str(code) if code is not None else None


def _map_error(exc: openai.APIError) -> EndpointError:
    if isinstance(exc, openai.APITimeoutError):
        return EndpointTimeout("the call timed out")
    if isinstance(exc, openai.APIConnectionError):
        return EndpointUnreachable(f"connection failed: {type(exc.__cause__).__name__}")
    if isinstance(exc, openai.APIResponseValidationError):
        return EndpointMalformed("the answer does not match the chat-completion schema")
    if not isinstance(exc, openai.APIStatusError):
        return EndpointMalformed(f"unexpected SDK error {type(exc).__name__}")
    rate = parse_rate_headers(exc.response.headers)
    status = exc.status_code
    code = _error_code(exc.body)
    if status == 429:
        return EndpointThrottled("HTTP 429", rate=rate)
    if status == 400 and code in _CONTENT_FILTER_CODES:
        return EndpointContentFiltered("the prompt was refused by the content filter", rate=rate)
    if status >= 500 or status in (408, 409):
        return EndpointServerError(f"HTTP {status}", status=status, rate=rate)
    return EndpointRejected(_error_message(exc.body, status), status=status, code=code, rate=rate)


_MAX_MESSAGE_CHARS = 500


def _error_message(body: object, status: int) -> str:
    """The service's own words for a refused request (an invalid schema names the offending
    keyword and where it is), cut short; the status alone when the body has none."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    if not isinstance(message, str) or not message.strip():
        return f"HTTP {status}"
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
    return message
