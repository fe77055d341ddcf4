"""The admin routes (``/_sim/*``): counters, the live configuration and its changes, reset.

They open only to the simulator's own admin key (``x-sim-admin-key``), never to chat credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from devhost.simulator.config import ADMIN_KEY_HEADER, ConfigValueError
from devhost.simulator.protocol import error_body, json_response
from devhost.simulator.state import STATE, SimulatorState

log = logging.getLogger(__name__)


def _admin_refusal(state: SimulatorState, request: web.Request) -> web.Response | None:
    """None when the request may use the admin routes: it carries the admin key in
    ``x-sim-admin-key``. Chat credentials (``api-key``, a bearer token) never suffice."""
    if state.config.admin_key is None:
        return json_response(
            error_body(
                "403", "Admin is disabled: this simulator was started without an admin key."
            ),
            status=403,
        )
    if not state.config.admin_authorized(request.headers.get(ADMIN_KEY_HEADER)):
        return json_response(
            error_body("401", f"Admin needs the simulator's admin key in {ADMIN_KEY_HEADER}."),
            status=401,
        )
    return None


_Handler = Callable[[web.Request, SimulatorState], Awaitable[web.Response]]


def _admin(handler: _Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An admin route: refused (403/401) unless the request carries the admin key."""

    async def guarded(request: web.Request) -> web.Response:
        state = request.app[STATE]
        refused = _admin_refusal(state, request)
        return refused if refused is not None else await handler(request, state)

    return guarded


@_admin
async def _stats(request: web.Request, state: SimulatorState) -> web.Response:
    return json_response(state.stats())


@_admin
async def _get_config(request: web.Request, state: SimulatorState) -> web.Response:
    return json_response(state.config.to_dict(reveal_key=False))


@_admin
async def _put_config(request: web.Request, state: SimulatorState) -> web.Response:
    try:
        patch = await request.json()
    except ValueError:
        return json_response(
            error_body("BadRequest", "The body must be a JSON object."), status=400
        )
    if isinstance(patch, dict) and ({"api_key", "accept_bearer", "admin_key"} & set(patch)):
        return json_response(
            error_body("BadRequest", "Credentials cannot be changed at runtime; restart instead."),
            status=400,
        )
    try:
        updated = state.config.merged(patch)
    except ConfigValueError as exc:
        return json_response(error_body("BadRequest", f"Invalid configuration: {exc}"), status=400)
    state.reconfigure(updated)
    log.info("simulator configuration updated: %s", sorted(patch))
    return json_response(updated.to_dict(reveal_key=False))


@_admin
async def _reset(request: web.Request, state: SimulatorState) -> web.Response:
    state.reset()
    return json_response({"status": "reset"})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_put("/_sim/config", _put_config)
    app.router.add_post("/_sim/reset", _reset)
