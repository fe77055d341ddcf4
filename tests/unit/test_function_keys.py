"""Keys where Azure wants keys (issue 10, item 8): function-level HTTP routes and the
simulator's admin routes.

Azure Functions: an HTTP trigger whose authorization level is not ``anonymous`` needs an access
key, "provided in the URL using the ``?code=`` query string or in the request header
(``x-functions-key``)"; the HTTP trigger's default level is ``function``.
https://learn.microsoft.com/azure/azure-functions/function-keys-how-to#use-access-keys and
https://learn.microsoft.com/azure/azure-functions/functions-bindings-http-webhook-trigger#http-auth
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from aiohttp.test_utils import TestClient, TestServer

from devhost.appmodel import HTTP, AppModel, FunctionSpec, HostOptions, load_app
from devhost.broker import Broker
from devhost.broker.publisher import BrokerPublisher
from devhost.environment import PROJECT_ROOT, Workdir, app_settings
from devhost.http import FUNCTION_KEY_FILE, auth_level, build_http_app, function_key
from devhost.simulator import DeploymentLimits, LatencyModel, SimulatorConfig, create_app
from shared import bootstrap
from tests.conftest import make_settings

KEY = "k" * 43


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The app's real HTTP functions behind devhost's router, over an empty SQLite store."""
    model = load_app(
        PROJECT_ROOT,
        app_settings(Workdir(tmp_path / "dh"), simulator_url="http://127.0.0.1:1"),
    )
    broker = Broker(tmp_path / "broker.sqlite3")
    bootstrap.configure(settings=make_settings(tmp_path), publisher=BrokerPublisher(broker))
    async with TestClient(TestServer(build_http_app(model, key=KEY))) as client:
        yield client
    await bootstrap.shutdown()
    broker.close()


def test_the_key_is_made_once_per_workdir_and_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    first = function_key(tmp_path / "a")
    path = tmp_path / "a" / FUNCTION_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 43  # 32 random bytes
    assert function_key(tmp_path / "a") == first  # the next run finds the same key
    assert function_key(tmp_path / "b") != first  # another workdir, another key


def test_an_unusable_key_file_is_replaced_and_a_loose_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / FUNCTION_KEY_FILE
    path.write_text("\n")
    made = function_key(tmp_path)
    assert made
    assert path.read_text().strip() == made
    path.chmod(0o644)
    assert function_key(tmp_path) == made
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_routes_take_their_level_from_the_binding_function_when_unnamed() -> None:
    model = load_app(PROJECT_ROOT, app_settings(Workdir(Path("/nonexistent")), simulator_url="x"))
    levels = {spec.name: auth_level(spec) for spec in model.of_type(HTTP)}
    assert levels == {
        "health": "ANONYMOUS",
        "ready": "ANONYMOUS",
        "openapi": "ANONYMOUS",
        "get_conversation": "FUNCTION",
        "get_batch": "FUNCTION",
        "post_request": "FUNCTION",
        "list_escalations": "FUNCTION",
        "get_escalation": "FUNCTION",
        "claim_escalation": "FUNCTION",
        "release_escalation": "FUNCTION",
        "resolve_escalation": "FUNCTION",
    }


async def test_anonymous_routes_stay_open(api: TestClient[Any, Any]) -> None:
    response = await api.get("/api/health")
    assert response.status == 200


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {}),
        ("?code=", {}),
        ("?code=wrong", {}),
        (f"?code={KEY[:-1]}", {}),  # all but the last character
        (f"?code={KEY}x", {}),
        ("", {"x-functions-key": "wrong"}),
        ("", {"api-key": KEY}),  # not where the Functions host looks
        ("", {"Authorization": f"Bearer {KEY}"}),
        (f"?key={KEY}", {}),
    ],
)
async def test_a_function_route_without_the_right_key_is_401_before_it_runs(
    api: TestClient[Any, Any], query: str, headers: dict[str, str]
) -> None:
    for path in ("/api/conversations/c-missing", "/api/batches/b-missing"):
        response = await api.get(path + query, headers=headers)
        assert response.status == 401
        assert await response.read() == b""


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (f"?code={KEY}", {}),
        ("", {"x-functions-key": KEY}),
        ("?code=wrong", {"x-functions-key": KEY}),  # either place may carry it
    ],
)
async def test_the_key_opens_a_function_route_as_code_or_header(
    api: TestClient[Any, Any], query: str, headers: dict[str, str]
) -> None:
    response = await api.get("/api/conversations/c-missing" + query, headers=headers)
    # The function ran: the store has no such conversation.
    assert response.status == 404
    assert (await response.json()) == {"error": "conversation not found"}


async def test_a_binding_without_a_level_needs_the_key(tmp_path: Path) -> None:
    async def echo(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("ran")

    spec = FunctionSpec(
        name="echo",
        trigger_type=HTTP,
        trigger={"type": HTTP, "route": "echo", "methods": ["GET"]},
        user_function=echo,
    )
    model = AppModel((spec,), HostOptions(), tmp_path)
    async with TestClient(TestServer(build_http_app(model, key=KEY))) as client:
        assert (await client.get("/api/echo")).status == 401
        opened = await client.get("/api/echo", headers={"x-functions-key": KEY})
        assert (opened.status, await opened.text()) == (200, "ran")


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="function key"):
        build_http_app(AppModel((), HostOptions(), PROJECT_ROOT), key="")


# ---------------------------------------------------------------------- the simulator's admin

CHAT_KEY = "chat-key"
ADMIN_KEY = "admin-key"


def simulator(**changes: Any) -> SimulatorConfig:
    base = {
        "api_key": CHAT_KEY,
        "admin_key": ADMIN_KEY,
        "deployments": {"chat": DeploymentLimits(tpm=60_000)},
        "latency": LatencyModel(fixed_ms=0),
    }
    return SimulatorConfig(**{**base, **changes})


ADMIN_CALLS = [
    ("GET", "/_sim/stats", None),
    ("GET", "/_sim/config", None),
    ("PUT", "/_sim/config", {"faults": {"error_rates": {"503": 1.0}}}),
    ("POST", "/_sim/reset", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"api-key": CHAT_KEY},
        {"Authorization": "Bearer anything"},  # accept_bearer opens chat, never admin
        {"Authorization": f"Bearer {CHAT_KEY}"},
        {"x-sim-admin-key": CHAT_KEY},
        {"x-sim-admin-key": ADMIN_KEY[:-1]},
        {"api-key": ADMIN_KEY},
    ],
)
async def test_chat_credentials_never_open_admin(
    method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    async with TestClient(TestServer(create_app(simulator()))) as client:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status == 401
        # Nothing changed: a chat call still succeeds (no injected 503).
        chat = await client.post(
            "/openai/deployments/chat/chat/completions?api-version=2024-10-21",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
            headers={"api-key": CHAT_KEY},
        )
        assert chat.status == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_the_admin_key_opens_admin(method: str, path: str, body: Any) -> None:
    async with TestClient(TestServer(create_app(simulator()))) as client:
        response = await client.request(
            method, path, json=body, headers={"x-sim-admin-key": ADMIN_KEY}
        )
        assert response.status == 200
        document = await response.json()
        if path == "/_sim/config":
            assert document["admin_key"] == "***"
            assert document["api_key"] == "***"


async def test_without_an_admin_key_admin_is_closed() -> None:
    async with TestClient(TestServer(create_app(simulator(admin_key=None)))) as client:
        for method, path, body in ADMIN_CALLS:
            response = await client.request(method, path, json=body, headers={"api-key": CHAT_KEY})
            assert response.status == 403


async def test_the_admin_key_cannot_be_changed_at_runtime() -> None:
    async with TestClient(TestServer(create_app(simulator()))) as client:
        headers = {"x-sim-admin-key": ADMIN_KEY}
        refused = await client.put("/_sim/config", json={"admin_key": "mine"}, headers=headers)
        assert refused.status == 400
        again = await client.get("/_sim/stats", headers=headers)
        assert again.status == 200
        mine = await client.get("/_sim/stats", headers={"x-sim-admin-key": "mine"})
        assert mine.status == 401


def test_the_admin_key_is_masked_and_kept_in_config_documents() -> None:
    config = simulator()
    assert config.to_dict(reveal_key=False)["admin_key"] == "***"
    assert SimulatorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
