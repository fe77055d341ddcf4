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
import hmac
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devhost.simulator.accounting import profile as accounting_profile
from devhost.simulator.completion import DEFAULT_MAX_OUTPUT_TOKENS, Answer, answer
from devhost.simulator.config import ConfigValueError, DeploymentLimits, SimulatorConfig
from devhost.simulator.faults import FAULT_HEADER, FaultDice, parse_fault_header
from devhost.simulator.protocol import (
    DEPLOYMENT_NOT_FOUND_MESSAGE,
    SERVER_ERROR_MESSAGES,
    UNAUTHORIZED_MESSAGE,
    RequestError,
    error_body,
    invalid_request_body,
    parse_chat_body,
    prompt_filter_results,
    prompt_filtered_body,
    rate_limit_message,
)
from devhost.simulator.ratelimit import Clock, Decision, DeploymentLimiter
from devhost.simulator.schema_gen import SchemaGenerationError
from devhost.simulator.tokens import estimate_prompt_tokens, tokenizer_name

log = logging.getLogger(__name__)

FORCED_RETRY_AFTER_MS = 1000
"""``retry-after-ms`` of a forced 429 when the quota itself would have admitted the request."""

_SHUTDOWN_TIMEOUT_S = 1.0
_BACKLOG = 1024


@dataclass
class DeploymentStats:
    """Counters of one deployment, as ``GET /_sim/stats`` reports them."""

    requests: int = 0
    succeeded: int = 0
    throttled: int = 0
    """429s from the quota (forced 429s are counted under ``faults``)."""
    bad_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0
    """What the quota windows counted for every admitted request (per the accounting profile:
    prompt + max_tokens for ``azure``)."""
    faults: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "throttled": self.throttled,
            "rate_limited": self.throttled + self.faults.get("429", 0),
            "bad_requests": self.bad_requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "charged_tokens": self.charged_tokens,
            "faults": dict(self.faults),
            "faults_injected": sum(self.faults.values()),
            "statuses": dict(self.statuses),
        }


class Deployment:
    """A deployment's limits, limiter and counters."""

    def __init__(self, name: str, limits: DeploymentLimits, clock: Clock) -> None:
        self.name = name
        self.limits = limits
        self.limiter = DeploymentLimiter(
            tpm=limits.tpm,
            rpm=limits.effective_rpm,
            clock=clock,
            profile=accounting_profile(limits.accounting),
        )
        self.stats = DeploymentStats()

    def apply(self, limits: DeploymentLimits) -> None:
        """Take new limits; the admitted history stays, so windows do not reset."""
        if limits != self.limits:
            self.limits = limits
            self.limiter.tpm = limits.tpm
            self.limiter.rpm = limits.effective_rpm
            self.limiter.profile = accounting_profile(limits.accounting)

    def rate_headers(self, decision: Decision) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limits.effective_rpm),
            "x-ratelimit-limit-tokens": str(self.limits.tpm),
            "x-ratelimit-remaining-requests": str(decision.remaining_requests),
            "x-ratelimit-remaining-tokens": str(decision.remaining_tokens),
        }


class SimulatorState:
    """Everything the handlers share. Lives in the application; one per simulator."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.deployments: dict[str, Deployment] = {}
        self.started = time.monotonic()
        self.in_flight = 0
        self.max_in_flight = 0
        self.config = config
        self.dice = FaultDice(config.faults, seed=config.seed)
        self._latency_rng = random.Random(config.seed)

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Apply a new configuration to running deployments, keeping their windows."""
        old = self.config
        self.config = config
        if config.faults != old.faults or config.seed != old.seed:
            self.dice = FaultDice(config.faults, seed=config.seed)
        for name, deployment in list(self.deployments.items()):
            limits = config.limits_for(name)
            if limits is None:
                del self.deployments[name]
            else:
                deployment.apply(limits)

    def reset(self) -> None:
        """Zero the counters and empty every rate window."""
        for deployment in self.deployments.values():
            deployment.stats = DeploymentStats()
            deployment.limiter.reset()

    def deployment(self, name: str) -> Deployment | None:
        limits = self.config.limits_for(name)
        if limits is None:
            return None
        found = self.deployments.get(name)
        if found is None:
            found = self.deployments[name] = Deployment(name, limits, self.clock)
        else:
            found.apply(limits)
        return found

    def authorized(self, headers: Mapping[str, str]) -> bool:
        config = self.config
        if not config.auth_required:
            return True
        key = headers.get("api-key")
        if key is not None and config.api_key is not None:
            return hmac.compare_digest(key.encode(), config.api_key.encode())
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if config.accept_bearer:
            return True
        return config.api_key is not None and hmac.compare_digest(
            token.encode(), config.api_key.encode()
        )

    def latency_s(self, completion_tokens: int) -> float:
        model = self.config.latency
        if model.fixed_ms is not None:
            return model.fixed_ms / 1000
        base = model.ttft_ms + model.per_token_ms * completion_tokens
        spread = self._latency_rng.uniform(-model.jitter, model.jitter) if model.jitter else 0.0
        return max(0.0, base * (1 + spread)) / 1000

    def first_token_s(self) -> float:
        model = self.config.latency
        return (model.fixed_ms if model.fixed_ms is not None else model.ttft_ms) / 1000

    def stats(self) -> dict[str, Any]:
        per_deployment = {name: d.stats.snapshot() for name, d in self.deployments.items()}
        totals: dict[str, int] = {}
        for snapshot in per_deployment.values():
            for key, value in snapshot.items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        return {
            "deployments": per_deployment,
            "totals": totals,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "tokenizer": tokenizer_name(),
            "uptime_s": round(time.monotonic() - self.started, 3),
        }


STATE = web.AppKey("simulator_state", SimulatorState)


def _json(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=dict(headers or {}), dumps=_compact_dumps)


def _compact_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@web.middleware
async def _envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request ids on every answer, and Azure-shaped JSON for routing errors and crashes."""
    request_id = str(uuid.uuid4())
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            response = _json(error_body("404", "Resource not found"), status=404)
        elif exc.status == 405:
            response = _json(
                error_body("405", f"Method {request.method} is not allowed here."), status=405
            )
        elif exc.status == 413:
            response = _json(error_body("413", "The request body is too large."), status=413)
        else:
            raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("simulator handler failed (request %s)", request_id)
        response = _json(
            error_body("InternalServerError", "The simulator failed; see its log."), status=500
        )
    response.headers["x-request-id"] = request_id
    response.headers["apim-request-id"] = request_id
    return response


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := _admin_refusal(state, request)) is not None:
        return refused
    return _json(state.stats())


async def _get_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := _admin_refusal(state, request)) is not None:
        return refused
    return _json(state.config.to_dict(reveal_key=False))


async def _put_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := _admin_refusal(state, request)) is not None:
        return refused
    try:
        patch = await request.json()
    except ValueError:
        return _json(error_body("BadRequest", "The body must be a JSON object."), status=400)
    if isinstance(patch, dict) and ({"api_key", "accept_bearer", "admin_key"} & set(patch)):
        return _json(
            error_body("BadRequest", "Credentials cannot be changed at runtime; restart instead."),
            status=400,
        )
    try:
        updated = state.config.merged(patch)
    except ConfigValueError as exc:
        return _json(error_body("BadRequest", f"Invalid configuration: {exc}"), status=400)
    state.reconfigure(updated)
    log.info("simulator configuration updated: %s", sorted(patch))
    return _json(updated.to_dict(reveal_key=False))


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := _admin_refusal(state, request)) is not None:
        return refused
    state.reset()
    return _json({"status": "reset"})


def _unauthorized() -> web.Response:
    return _json(error_body("401", UNAUTHORIZED_MESSAGE), status=401)


ADMIN_KEY_HEADER = "x-sim-admin-key"


def _admin_refusal(state: SimulatorState, request: web.Request) -> web.Response | None:
    """None when the request may use the admin routes: it carries the admin key in
    ``x-sim-admin-key``. Chat credentials (``api-key``, a bearer token) never suffice."""
    if state.config.admin_key is None:
        return _json(
            error_body(
                "403", "Admin is disabled: this simulator was started without an admin key."
            ),
            status=403,
        )
    if not state.config.admin_authorized(request.headers.get(ADMIN_KEY_HEADER)):
        return _json(
            error_body("401", f"Admin needs the simulator's admin key in {ADMIN_KEY_HEADER}."),
            status=401,
        )
    return None


async def _azure_chat(request: web.Request) -> web.Response:
    api_version = request.query.get("api-version", "").strip()
    if not api_version:
        return _json(
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
        return _unauthorized()
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _json(
            invalid_request_body(
                "The request body is not valid JSON.", param=None, code="invalid_json"
            ),
            status=400,
        )
    name = path_deployment
    if name is None:
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return _json(
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
        return _json(error_body("DeploymentNotFound", DEPLOYMENT_NOT_FOUND_MESSAGE), status=404)
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
        return _json(exc.body(), status=400, headers=_current_headers(deployment))
    except ValueError as exc:
        stats.bad_requests += 1
        return _json(
            invalid_request_body(str(exc), param=FAULT_HEADER, code="invalid_value"),
            status=400,
            headers=_current_headers(deployment),
        )

    prompt_tokens = estimate_prompt_tokens(call.messages)
    max_tokens = (call.max_tokens or DEFAULT_MAX_OUTPUT_TOKENS) * call.n
    cost = deployment.limiter.profile.charge_for(prompt_tokens, max_tokens)
    if fault == "429":
        _count_fault(stats, fault)
        return _throttled(deployment, deployment.limiter.peek(cost), api_version, forced=True)
    decision = deployment.limiter.try_acquire(cost)
    if not decision.admitted:
        stats.throttled += 1
        return _throttled(deployment, decision, api_version, forced=False)
    stats.charged_tokens += deployment.limiter.charge_for(cost)
    failure = await _failure(state, deployment, fault)
    if failure is not None:
        return failure
    try:
        result = answer(call, seed=state.config.seed, fault=fault)
    except SchemaGenerationError as exc:
        stats.bad_requests += 1
        return _json(
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
    return _json(payload, headers=_current_headers(deployment))


async def _failure(
    state: SimulatorState, deployment: Deployment, fault: str | None
) -> web.Response | None:
    """The answer of an admitted request whose fault replaces the completion, if any."""
    if fault == "content_filter":
        _count_fault(deployment.stats, fault)
        return _json(prompt_filtered_body(), status=400, headers=_current_headers(deployment))
    if fault is not None and fault.isdigit():
        _count_fault(deployment.stats, fault)
        await state.sleep(state.first_token_s())
        return _server_error(int(fault), deployment)
    if fault == "timeout":
        _count_fault(deployment.stats, fault)
        await state.sleep(state.config.faults.timeout_s)
        return _json(
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


def _throttled(
    deployment: Deployment, decision: Decision, api_version: str, *, forced: bool
) -> web.Response:
    retry_ms = decision.retry_after_ms
    if forced:
        retry_ms = max(retry_ms, FORCED_RETRY_AFTER_MS)
    retry_s = max(1, math.ceil(retry_ms / 1000))
    headers = deployment.rate_headers(decision)
    if deployment.limiter.profile.retry_after_ms:
        headers["retry-after-ms"] = str(retry_ms)
    headers["retry-after"] = str(retry_s)
    message = rate_limit_message(api_version, retry_s, decision.limited_by)
    return _json(error_body("429", message), status=429, headers=headers)


def _server_error(status: int, deployment: Deployment) -> web.Response:
    code, message = SERVER_ERROR_MESSAGES.get(
        status, (str(status), f"The simulator injected HTTP {status}.")
    )
    return _json(
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
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_put("/_sim/config", _put_config)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _azure_chat)
    app.router.add_post("/openai/v1/chat/completions", _v1_chat)
    app.router.add_post("/v1/chat/completions", _v1_chat)
    return app


class RunningSimulator:
    """A simulator serving on a loopback port. Stop it with ``await stop()`` or ``async with``."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self.app = app
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self._stopped = False

    @property
    def config(self) -> SimulatorConfig:
        return self.app[STATE].config

    def stats(self) -> dict[str, Any]:
        """The same counters as ``GET /_sim/stats``."""
        return self.app[STATE].stats()

    def reconfigure(self, patch: Mapping[str, Any] | SimulatorConfig) -> SimulatorConfig:
        """Change faults, latency or limits in place (like ``PUT /_sim/config``)."""
        state = self.app[STATE]
        updated = patch if isinstance(patch, SimulatorConfig) else state.config.merged(patch)
        state.reconfigure(updated)
        return updated

    def reset(self) -> None:
        """Zero the counters and empty the rate windows (like ``POST /_sim/reset``)."""
        self.app[STATE].reset()

    async def stop(self) -> None:
        """Stop serving; in-flight requests get a short grace period, then are cancelled."""
        if self._stopped:
            return
        self._stopped = True
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


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
