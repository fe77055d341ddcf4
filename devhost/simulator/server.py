"""The aiohttp application: routes, auth, quota, faults, latency, and the running server.

Request pipeline for a chat completion (each step can end it):

1. Azure route without ``api-version`` -> 400 ``MissingApiVersionParameter``.
2. Credentials -> 401.
3. Body is JSON and names a deployment (path or ``model``) -> 400; unknown deployment -> 404.
4. Body validation -> 400 ``invalid_request_error``; bad ``x-sim-fault`` value -> 400.
5. Forced ``429`` fault, then the rate limiter -> 429 (never charged).
6. Admitted and charged. Then prompt content filter -> 400; error-status fault -> that status
   after the time to first token; ``timeout`` -> sleeps ``timeout_s`` then 408.
7. The answer is written, the latency model sleeps, and 200 is returned.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from devhost.simulator.admin import add_admin_routes
from devhost.simulator.completion import DEFAULT_MAX_OUTPUT_TOKENS, Answer, answer
from devhost.simulator.config import SimulatorConfig
from devhost.simulator.faults import FAULT_HEADER, parse_fault_header
from devhost.simulator.protocol import (
    DEPLOYMENT_NOT_FOUND_MESSAGE,
    SERVER_ERROR_MESSAGES,
    UNAUTHORIZED_MESSAGE,
    ChatCall,
    RequestError,
    error_body,
    invalid_request_body,
    json_response,
    parse_chat_body,
    prompt_filter_results,
    prompt_filtered_body,
    rate_limit_message,
)
from devhost.simulator.ratelimit import Clock, Decision
from devhost.simulator.schema_gen import SchemaGenerationError
from devhost.simulator.state import STATE, Deployment, DeploymentStats, SimulatorState
from devhost.simulator.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT_S = 1.0
_BACKLOG = 1024
# aiohttp's routing refusals, answered in Azure's error envelope.
_ROUTING_ERRORS = {
    404: "Resource not found",
    405: "Method {method} is not allowed here.",
    413: "The request body is too large.",
}


@web.middleware
async def _envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request ids on every answer, and Azure-shaped JSON for routing errors and crashes."""
    request_id = str(uuid.uuid4())
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status not in _ROUTING_ERRORS:
            raise
        message = _ROUTING_ERRORS[exc.status].format(method=request.method)
        response = json_response(error_body(str(exc.status), message), status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("simulator handler failed (request %s)", request_id)
        response = json_response(
            error_body("InternalServerError", "The simulator failed; see its log."), status=500
        )
    response.headers["x-request-id"] = request_id
    response.headers["apim-request-id"] = request_id
    return response


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _azure_chat(request: web.Request) -> web.Response:
    api_version = request.query.get("api-version", "").strip()
    if not api_version:
        return json_response(
            error_body(
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            ),
            status=400,
        )
    return await _chat(request, request.match_info["deployment"], api_version)


async def _v1_chat(request: web.Request) -> web.Response:
    return await _chat(request, None, request.query.get("api-version", "").strip() or "v1")


async def _chat(
    request: web.Request, path_deployment: str | None, api_version: str
) -> web.Response:
    state = request.app[STATE]
    if not state.authorized(request.headers):
        return json_response(error_body("401", UNAUTHORIZED_MESSAGE), status=401)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_response(
            invalid_request_body(
                "The request body is not valid JSON.", param=None, code="invalid_json"
            ),
            status=400,
        )
    name = path_deployment
    if name is None:
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return json_response(
                invalid_request_body(
                    "Missing required parameter: 'model' (the deployment name).",
                    param="model",
                    code="missing_required_parameter",
                ),
                status=400,
            )
        name = model
    deployment = state.deployment(name)
    if deployment is None:
        return json_response(
            error_body("DeploymentNotFound", DEPLOYMENT_NOT_FOUND_MESSAGE), status=404
        )
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        response = await _serve(state, deployment, request, body, api_version)
    finally:
        state.in_flight -= 1
    statuses = deployment.stats.statuses
    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
    return response


async def _serve(
    state: SimulatorState,
    deployment: Deployment,
    request: web.Request,
    body: Any,
    api_version: str,
) -> web.Response:
    stats = deployment.stats
    stats.requests += 1
    try:
        call = parse_chat_body(body)
        header = request.headers.get(FAULT_HEADER)
        fault = parse_fault_header(header) if header is not None else state.dice.draw()
    except RequestError as exc:
        stats.bad_requests += 1
        return json_response(exc.body(), status=400, headers=_current_headers(deployment))
    except ValueError as exc:
        stats.bad_requests += 1
        return json_response(
            invalid_request_body(str(exc), param=FAULT_HEADER, code="invalid_value"),
            status=400,
            headers=_current_headers(deployment),
        )
    prompt_tokens = estimate_prompt_tokens(call.messages)
    refused = _admit(deployment, call, prompt_tokens, fault, api_version)
    if refused is None:
        refused = await _failure(state, deployment, fault)
    if refused is not None:
        return refused
    return await _complete(state, deployment, call, prompt_tokens, fault)


def _admit(
    deployment: Deployment, call: ChatCall, prompt_tokens: int, fault: str | None, api_version: str
) -> web.Response | None:
    """Charge the request to the quota, or the 429 (forced or real, never charged)."""
    max_tokens = (call.max_tokens or DEFAULT_MAX_OUTPUT_TOKENS) * call.n
    cost = deployment.limiter.profile.charge_for(prompt_tokens, max_tokens)
    if fault == "429":
        _count_fault(deployment.stats, fault)
        return _throttled(deployment, deployment.limiter.forced_refusal(cost), api_version)
    decision = deployment.limiter.try_acquire(cost)
    if not decision.admitted:
        deployment.stats.throttled += 1
        return _throttled(deployment, decision, api_version)
    deployment.stats.charged_tokens += deployment.limiter.charge_for(cost)
    return None


async def _complete(
    state: SimulatorState,
    deployment: Deployment,
    call: ChatCall,
    prompt_tokens: int,
    fault: str | None,
) -> web.Response:
    """The completion of an admitted request, after the latency model's wait."""
    stats = deployment.stats
    try:
        result = answer(call, seed=state.config.seed, fault=fault)
    except SchemaGenerationError as exc:
        stats.bad_requests += 1
        return json_response(
            invalid_request_body(
                f"Invalid schema for response_format '{call.response_format.name}': {exc}",
                param="response_format",
                code="invalid_value",
            ),
            status=400,
            headers=_current_headers(deployment),
        )
    if result.fault_applied is not None:
        _count_fault(stats, result.fault_applied)
    await state.sleep(state.latency_s(result.completion_tokens))
    stats.charged_tokens += deployment.limiter.charge_usage(
        prompt_tokens + result.completion_tokens
    )
    stats.succeeded += 1
    stats.prompt_tokens += prompt_tokens
    stats.completion_tokens += result.completion_tokens
    log.debug(
        "chat %s prompt_tokens=%d completion_tokens=%d",
        deployment.name,
        prompt_tokens,
        result.completion_tokens,
    )
    payload = _completion_body(state, deployment, result, prompt_tokens)
    return json_response(payload, headers=_current_headers(deployment))


async def _failure(
    state: SimulatorState, deployment: Deployment, fault: str | None
) -> web.Response | None:
    """The answer of an admitted request whose fault replaces the completion, if any."""
    if fault == "content_filter":
        _count_fault(deployment.stats, fault)
        return json_response(
            prompt_filtered_body(), status=400, headers=_current_headers(deployment)
        )
    if fault is not None and fault.isdigit():
        _count_fault(deployment.stats, fault)
        await state.sleep(state.first_token_s())
        return _server_error(int(fault), deployment)
    if fault == "timeout":
        _count_fault(deployment.stats, fault)
        await state.sleep(state.config.faults.timeout_s)
        return json_response(
            error_body("Timeout", "The operation timed out."),
            status=408,
            headers=_current_headers(deployment),
        )
    return None


def _completion_body(
    state: SimulatorState, deployment: Deployment, result: Answer, prompt_tokens: int
) -> dict[str, Any]:
    """The ``chat.completion`` object, as Azure OpenAI shapes it."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:29]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": deployment.limits.model or deployment.name,
        "choices": result.choice_bodies(),
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "prompt_filter_results": prompt_filter_results(),
        "system_fingerprint": f"fp_sim{state.config.seed & 0xFFFFFF:06x}",
    }


def _current_headers(deployment: Deployment) -> dict[str, str]:
    return deployment.rate_headers(deployment.limiter.peek())


def _count_fault(stats: DeploymentStats, kind: str) -> None:
    stats.faults[kind] = stats.faults.get(kind, 0) + 1


def _throttled(deployment: Deployment, decision: Decision, api_version: str) -> web.Response:
    retry_ms = decision.retry_after_ms
    retry_s = max(1, math.ceil(retry_ms / 1000))
    headers = deployment.rate_headers(decision)
    if deployment.limiter.profile.retry_after_ms:
        headers["retry-after-ms"] = str(retry_ms)
    headers["retry-after"] = str(retry_s)
    message = rate_limit_message(api_version, retry_s, decision.limited_by)
    return json_response(error_body("429", message), status=429, headers=headers)


def _server_error(status: int, deployment: Deployment) -> web.Response:
    code, message = SERVER_ERROR_MESSAGES.get(
        status, (str(status), f"The simulator injected HTTP {status}.")
    )
    return json_response(
        error_body(code, message),
        status=status,
        headers=_current_headers(deployment),
    )


def create_app(
    config: SimulatorConfig,
    *,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> web.Application:
    """The simulator as an aiohttp application (``clock``/``sleep`` are injectable for tests)."""
    app = web.Application(middlewares=[_envelope], client_max_size=4 * 1024 * 1024)
    app[STATE] = SimulatorState(config, clock=clock, sleep=sleep)
    app.router.add_get("/health", _health)
    add_admin_routes(app)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _azure_chat)
    app.router.add_post("/openai/v1/chat/completions", _v1_chat)
    app.router.add_post("/v1/chat/completions", _v1_chat)
    return app


class RunningSimulator:
    """A simulator serving on a loopback port; ``await stop()`` ends it (``run_simulator`` is
    the ``async with`` form)."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self.app = app
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self._stopped = False

    def stats(self) -> dict[str, Any]:
        """The same counters as ``GET /_sim/stats``."""
        return self.app[STATE].stats()

    def reset(self) -> None:
        """Zero the counters and empty the rate windows (like ``POST /_sim/reset``)."""
        self.app[STATE].reset()

    async def stop(self) -> None:
        """Stop serving; in-flight requests get a short grace period, then are cancelled."""
        if self._stopped:
            return
        self._stopped = True
        await self._runner.cleanup()


async def start_simulator(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
) -> RunningSimulator:
    """Serve the simulator on ``host:port`` (port 0: a free one) and return it running."""
    app = create_app(config, clock=clock or time.monotonic)
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=_BACKLOG)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    log.info("Azure OpenAI simulator listening on http://%s:%d", host, bound_port)
    return RunningSimulator(runner, app, host, bound_port)


@asynccontextmanager
async def run_simulator(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
) -> AsyncIterator[RunningSimulator]:
    """``async with run_simulator(config) as sim:`` — started on entry, stopped on exit."""
    simulator = await start_simulator(config, host=host, port=port, clock=clock)
    try:
        yield simulator
    finally:
        await simulator.stop()
