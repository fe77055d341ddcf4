"""HTTP triggers served on 127.0.0.1 with aiohttp, under ``/api`` as the Functions host does."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import azure.functions as func
from aiohttp import web

from devhost.appmodel import HTTP, AppModel, FunctionSpec

log = logging.getLogger(__name__)
_ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\??\}")


def _handler(
    spec: FunctionSpec,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params=dict(request.match_info),
            body=body,
        )
        try:
            response = await spec.user_function(req)
        except Exception:
            log.exception("HTTP function %s failed", spec.name)
            return web.json_response({"error": "internal error"}, status=500)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
        return web.Response(
            body=response.get_body(),
            status=response.status_code,
            headers=headers,
            content_type=response.mimetype or "text/plain",
            charset=response.charset
            if response.mimetype and response.mimetype.startswith("text")
            else None,
        )

    return handle


def build_http_app(model: AppModel) -> web.Application:
    """One aiohttp route per HTTP function and method; ``{id}`` route params as the host has."""
    app = web.Application()
    for spec in model.of_type(HTTP):
        route = "/api/" + _ROUTE_PARAM.sub(r"{\1}", str(spec.trigger.get("route") or spec.name))
        methods = spec.trigger.get("methods") or ["GET", "POST"]
        for method in methods:
            app.router.add_route(str(method).upper(), route, _handler(spec))
    return app


async def start_http(model: AppModel, *, port: int) -> tuple[web.AppRunner, int]:
    """Serve on 127.0.0.1 only; ``port=0`` picks a free port. Returns the runner and the port."""
    runner = web.AppRunner(build_http_app(model), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    addresses = runner.addresses
    bound = addresses[0][1] if addresses else port
    return runner, int(bound)
