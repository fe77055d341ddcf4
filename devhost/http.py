"""HTTP triggers served on 127.0.0.1 with aiohttp, under ``/api`` as the Functions host does.

Authorization levels as the Functions host applies them: a route whose trigger binding says
``authLevel`` ``ANONYMOUS`` is open; ``FUNCTION`` (the default when a binding names none) and
``ADMIN`` need an access key, sent as the ``code`` query parameter or the ``x-functions-key``
header; a request without it, or with a wrong one, is answered 401 before the function runs.
devhost has one key per workdir (:func:`function_key`), standing for the app's host key (which
opens every function-level route) and, having no other, for its master key.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from devhost.appmodel import HTTP, AppModel, FunctionSpec
from devhost.bindings import http_request

log = logging.getLogger(__name__)
_ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\??\}")

FUNCTION_KEY_FILE = "function-key"
"""The file in a workdir that holds its function key (mode 0600)."""
KEY_HEADER = "x-functions-key"
KEY_QUERY = "code"
ANONYMOUS = "ANONYMOUS"
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


def function_key(root: Path) -> str:
    """The workdir's function key: read from ``root / function-key``, or made once (32 random
    bytes, URL-safe base64) and written there readable by its owner only.

    Creating the file is exclusive (``O_EXCL``), so two processes racing to make it end with
    one key. A file holding something that is not a key (empty, cut short) is replaced.
    """
    path = root / FUNCTION_KEY_FILE
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            existing = path.read_text(encoding="ascii", errors="replace").strip()
            if _KEY_CHARS.match(existing):
                if path.stat().st_mode & 0o077:
                    with contextlib.suppress(OSError):  # a read-only workdir keeps its mode
                        path.chmod(0o600)
                return existing
            path.unlink()  # unusable: make a new one
        key = secrets.token_urlsafe(32)
        root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # another process made it first: read theirs
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return key
    raise OSError(f"cannot create a function key in {path}")


def auth_level(spec: FunctionSpec) -> str:
    """The route's authorization level, upper case; ``FUNCTION`` when the binding names none,
    the HTTP trigger's default."""
    return str(spec.trigger.get("authLevel") or "FUNCTION").upper()


def authorized(request: web.Request, key: str) -> bool:
    """Whether ``request`` carries ``key`` as ``?code=`` or ``x-functions-key``; compared in
    constant time, so the answer's timing says nothing about how much of a guess was right."""
    expected = key.encode()
    for offered in (request.headers.get(KEY_HEADER), request.query.get(KEY_QUERY)):
        if offered is not None and hmac.compare_digest(offered.encode(), expected):
            return True
    return False


def _unauthorized() -> web.Response:
    # The Functions host answers a missing or wrong key with an empty 401.
    return web.Response(status=401)


def _handler(
    spec: FunctionSpec, key: str | None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if key is not None and not authorized(request, key):
            return _unauthorized()
        body = await request.read()
        req = http_request(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            query=dict(request.query),
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


DASHBOARD_PREFIX = "/dashboard"
"""Where devhost's dashboard (``devhost.dashboard``) is mounted, beside ``/api``."""


def build_http_app(
    model: AppModel, *, key: str, dashboard: web.Application | None = None
) -> web.Application:
    """One aiohttp route per HTTP function and method; ``{id}`` route params as the host has.
    Every route but an ``ANONYMOUS`` one requires ``key``. ``dashboard``, when given, is
    mounted under ``/dashboard`` (it applies the same key rule itself)."""
    if not key:
        raise ValueError("a function key is required")
    app = web.Application()
    for spec in model.of_type(HTTP):
        route = "/api/" + _ROUTE_PARAM.sub(r"{\1}", str(spec.trigger.get("route") or spec.name))
        methods = spec.trigger.get("methods") or ["GET", "POST"]
        required = None if auth_level(spec) == ANONYMOUS else key
        for method in methods:
            app.router.add_route(str(method).upper(), route, _handler(spec, required))
    if dashboard is not None:
        app.router.add_get(DASHBOARD_PREFIX, _to_dashboard)
        app.add_subapp(DASHBOARD_PREFIX, dashboard)
    return app


async def _to_dashboard(request: web.Request) -> web.StreamResponse:
    """``/dashboard`` without its slash: the same address with it (and the same query)."""
    query = request.rel_url.raw_query_string
    target = DASHBOARD_PREFIX + "/" + (f"?{query}" if query else "")
    return web.Response(status=308, headers={"Location": target})


async def start_http(
    model: AppModel, *, port: int, key: str, dashboard: web.Application | None = None
) -> tuple[web.AppRunner, int]:
    """Serve on 127.0.0.1 only; ``port=0`` picks a free port. Returns the runner and the port."""
    runner = web.AppRunner(build_http_app(model, key=key, dashboard=dashboard), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    addresses = runner.addresses
    bound = addresses[0][1] if addresses else port
    return runner, int(bound)
