"""Who may open the dashboard, and which requests may change something.

The same rule as the app's function-level routes: the workdir's function key, as ``?code=``
or ``x-functions-key``. A browser that arrives with ``?code=`` gets a session cookie instead
(derived from the key, ``HttpOnly``, ``SameSite=Strict``, scoped to the dashboard) and is
redirected to the same page without the key in its address.

A request that changes something (a replay, a work-item action) is a POST that must come from
a dashboard page: its ``Origin`` (or, lacking one, its ``Referer``) must be this server, and its
form must carry the CSRF token the page was rendered with. Every answer forbids framing and
inline scripts.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from devhost.http import KEY_HEADER, KEY_QUERY

COOKIE = "devhost_dashboard"
CSRF_FIELD = "csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _derive(key: str, purpose: str) -> str:
    return hmac.new(
        key.encode(), f"devhost-dashboard:{purpose}".encode(), hashlib.sha256
    ).hexdigest()


def session_value(key: str) -> str:
    return _derive(key, "session")


def csrf_token(key: str) -> str:
    return _derive(key, "csrf")


def _equal(offered: str | None, expected: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def same_origin(request: web.Request) -> bool:
    """Whether the request was sent by a page of this server (``Origin``, else ``Referer``)."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme == "http" and parts.netloc == request.host


def loopback_host(request: web.Request) -> bool:
    """The ``Host`` header names this machine: a page on another name that resolves here (DNS
    rebinding) is refused."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return host in LOOPBACK_HOSTS


def middleware(key: str, *, cookie_path: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuses what the module docstring says; ``cookie_path`` scopes the session cookie."""
    session = session_value(key)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not loopback_host(request):
            return _plain(421, "devhost's dashboard answers on 127.0.0.1 only")
        code = request.query.get(KEY_QUERY)
        if _equal(code, key) and request.method == "GET":
            rest = [(k, v) for k, v in request.query.items() if k != KEY_QUERY]
            target = request.rel_url.with_query(rest)
            response = web.Response(status=303, headers={"Location": str(target)})
            response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path=cookie_path)
            return _secured(response)
        allowed = (
            _equal(request.cookies.get(COOKIE), session)
            or _equal(request.headers.get(KEY_HEADER), key)
            or _equal(code, key)
        )
        if not allowed:
            return _secured(
                _plain(
                    401,
                    "devhost dashboard: open the address `python -m devhost dashboard` prints "
                    "(it carries the workdir's function key once).",
                )
            )
        if request.method == "POST" and not request.path.endswith(("/v1/traces", "/v1/metrics")):
            if not same_origin(request):
                return _secured(
                    _plain(403, "refused: the request did not come from a dashboard page")
                )
            form = await request.post()
            if not _equal(str(form.get(CSRF_FIELD, "")), csrf_token(key)):
                return _secured(_plain(403, "refused: the form's CSRF token is missing or wrong"))
        return _secured(await handler(request))

    return guard


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
